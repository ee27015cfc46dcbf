-- Each receiver's history: the alerts that left it for good (done, expired, skipped, cleared,
-- filtered or denied), newest last, with their trails (src/store/history.rs reads them). The
-- writer keeps each receiver's newest `--history` and deletes older ones as it sweeps. Kept apart
-- from `receivers` and `queue`, so a receiver forgotten when idle keeps its history.
CREATE TABLE history (
    n        INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver TEXT NOT NULL,
    id       TEXT NOT NULL,
    status   TEXT NOT NULL,
    trail    TEXT NOT NULL,
    json     TEXT NOT NULL
);
CREATE INDEX history_of_receiver ON history (receiver, n);

-- The trail of each waiting alert so far (when it was received, and sent and put back before),
-- and of the alert in flight as of its last send. The time an alert started is not kept: at a
-- restart the alert in flight is sent again, and its trail says so. Rows of before have none.
ALTER TABLE queue ADD COLUMN trail TEXT NOT NULL DEFAULT '';
ALTER TABLE receivers ADD COLUMN flight_trail TEXT;

-- Alerts held for the streamer's approval (`hold_for_approval`), oldest first by `n`: each goes
-- to the back of its lane (`lane`: 1 the priority lane, 0 the normal one) once approved, by the
-- streamer or by itself at `approve_at` (ms), or into history once denied.
CREATE TABLE held (
    n           INTEGER PRIMARY KEY AUTOINCREMENT,
    receiver    TEXT NOT NULL,
    id          TEXT NOT NULL,
    lane        INTEGER NOT NULL,
    approve_at  INTEGER,
    duration_ms INTEGER NOT NULL,
    trail       TEXT NOT NULL,
    json        TEXT NOT NULL,
    UNIQUE (receiver, id)
);
