-- The embedded store's first schema: what the pure machine's receivers hold that must outlive
-- the process (src/store/embedded/disk.rs writes and reads it). Presence is not kept: widgets
-- reconnect after a restart and report again.

-- One row per receiver with a seq to keep, and its alert in flight, if any, in the flight_
-- columns (both NULL when the receiver is free). The alert itself stays in its queue row, at
-- `flight_pos`: sending it changes this small row, not a row holding the alert's text. Whether
-- it started, and its deadline, are not kept: at start every alert that was in flight goes
-- back to its queue to be sent again (src/store/embedded/mod.rs), so `started`, the most
-- frequent transition, writes nothing.
--
-- `head_pos` is the `pos` of the first waiting alert. A row below it, but the one in flight, is
-- done with: sending or completing an alert moves `head_pos` and `flight_pos` in this one row
-- rather than deleting a row from another page of `queue` for each alert, and such rows are
-- deleted later, many at a time (src/store/embedded/disk.rs, `tidy`). NULL: every row of the
-- receiver is live.
CREATE TABLE receivers (
    receiver       TEXT PRIMARY KEY NOT NULL,
    seq            INTEGER NOT NULL,
    head_pos       INTEGER,
    flight_pos     INTEGER,
    flight_attempt INTEGER
) WITHOUT ROWID;

-- Alerts, one row each: the waiting ones, and the one in flight (at its receiver's
-- flight_pos). `pos` orders a receiver's queue, head first; it counts down for an alert put
-- back at the head and up for a new one at the back, so neither moves a row. `sent` is how
-- many times a waiting alert was sent before going back to the queue.
CREATE TABLE queue (
    receiver    TEXT NOT NULL,
    pos         INTEGER NOT NULL,
    id          TEXT NOT NULL,
    duration_ms INTEGER NOT NULL,
    sent        INTEGER NOT NULL,
    json        TEXT NOT NULL,
    PRIMARY KEY (receiver, pos)
) WITHOUT ROWID;

-- Idempotency keys of publishes, each until `until_ms` (24 hours after the first publish).
CREATE TABLE idempotency (
    receiver TEXT NOT NULL,
    key      TEXT NOT NULL,
    id       TEXT NOT NULL,
    position INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    PRIMARY KEY (receiver, key)
) WITHOUT ROWID;
CREATE INDEX idempotency_until ON idempotency (until_ms);
