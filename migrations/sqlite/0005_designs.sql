-- Each receiver's designs (`PUT /receivers/{r}/designs`), version by version: the newest is
-- what widgets show, and the ones before it (the last 50 in all) are there to go back to.
CREATE TABLE designs (
    receiver TEXT NOT NULL,
    version  INTEGER NOT NULL,
    at_ms    INTEGER NOT NULL,
    json     TEXT NOT NULL,
    PRIMARY KEY (receiver, version)
) WITHOUT ROWID;
