-- Realtime streams: per-space job counts kept in step with every transition
-- (so a space stream's `connected` costs one row read), the space stream's
-- instance id, and the per-space opt-in to token-less job streams.

ALTER TABLE spaces ADD COLUMN count_scheduled INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spaces ADD COLUMN count_pending   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spaces ADD COLUMN count_delivered INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spaces ADD COLUMN count_running   INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spaces ADD COLUMN count_completed INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spaces ADD COLUMN count_dead      INTEGER NOT NULL DEFAULT 0;
ALTER TABLE spaces ADD COLUMN count_killed    INTEGER NOT NULL DEFAULT 0;
-- Identifies the space's event sequence. The sequence is durable, so this
-- changes only if the sequence itself could not be continued.
ALTER TABLE spaces ADD COLUMN stream_id TEXT NOT NULL DEFAULT '';
ALTER TABLE spaces ADD COLUMN anonymous_progress_streams INTEGER NOT NULL DEFAULT 0;

UPDATE spaces SET
    count_scheduled = (SELECT COUNT(*) FROM jobs WHERE jobs.space_id = spaces.id AND status = 'scheduled'),
    count_pending   = (SELECT COUNT(*) FROM jobs WHERE jobs.space_id = spaces.id AND status = 'pending'),
    count_delivered = (SELECT COUNT(*) FROM jobs WHERE jobs.space_id = spaces.id AND status = 'delivered'),
    count_running   = (SELECT COUNT(*) FROM jobs WHERE jobs.space_id = spaces.id AND status = 'running'),
    count_completed = (SELECT COUNT(*) FROM jobs WHERE jobs.space_id = spaces.id AND status = 'completed'),
    count_dead      = (SELECT COUNT(*) FROM jobs WHERE jobs.space_id = spaces.id AND status = 'dead'),
    count_killed    = (SELECT COUNT(*) FROM jobs WHERE jobs.space_id = spaces.id AND status = 'killed'),
    stream_id       = lower(hex(randomblob(16)));
