-- The streamer's controls.
--
-- `paused`: 1 while nothing new may go out to the receiver's widgets. A receiver that is paused
-- keeps its row even when idle, so the pause outlives its queue and a restart.
--
-- `priority_head`: the `pos` of the first row of the priority lane (high-priority alerts, and
-- alerts put back at the head), which goes out before the normal lane. The two lanes share the
-- `queue` table in two ranges of `pos` that never meet: the normal lane's around 0, where it
-- always was, and the priority lane's around -2^60 (any `pos` below -2^59 is the priority
-- lane's). Rows of the priority lane below `priority_head`, like rows of the normal lane below
-- `head_pos`, are done with, but the one in flight.
ALTER TABLE receivers ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
ALTER TABLE receivers ADD COLUMN priority_head INTEGER NOT NULL DEFAULT -1152921504606846976;

-- Each receiver's moderation settings, as `PUT /receivers/{r}/settings` took them (JSON).
CREATE TABLE settings (
    receiver TEXT PRIMARY KEY NOT NULL,
    json     TEXT NOT NULL
) WITHOUT ROWID;

-- Each receiver's token generations, 0 until first rotated (`POST /receivers/{r}/tokens/rotate`):
-- a token is made for one generation, so rotating retires the old one.
CREATE TABLE tokens (
    receiver  TEXT PRIMARY KEY NOT NULL,
    widget    INTEGER NOT NULL DEFAULT 0,
    dashboard INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
