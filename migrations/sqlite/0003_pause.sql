-- The streamer's pause: 1 while nothing new may go out to the receiver's widgets. A receiver
-- that is paused keeps its row even when idle, so the pause outlives its queue and a restart.
ALTER TABLE receivers ADD COLUMN paused INTEGER NOT NULL DEFAULT 0;
