-- Recurring schedules. A fire advances next_fire_at with a conditional
-- update in the same transaction that inserts its job, so on any number of
-- cores each fire time is made once; the unique index on the jobs a
-- schedule made holds the same line from below.
CREATE TABLE schedules (
    id             TEXT PRIMARY KEY,
    space_id       TEXT NOT NULL REFERENCES spaces (id),
    cron           TEXT NOT NULL,
    time_zone      TEXT NOT NULL,
    job            TEXT NOT NULL,
    overlap        TEXT NOT NULL,
    catch_up       TEXT NOT NULL,
    catch_up_limit BIGINT NOT NULL,
    paused         BIGINT NOT NULL,
    next_fire_at   BIGINT,
    last_fire_at   BIGINT,
    last_job_id    TEXT,
    version        BIGINT NOT NULL,
    created_at     BIGINT NOT NULL,
    updated_at     BIGINT NOT NULL
);
CREATE INDEX schedules_space ON schedules (space_id, id);
CREATE INDEX schedules_due ON schedules (next_fire_at) WHERE paused = 0 AND next_fire_at IS NOT NULL;

ALTER TABLE jobs ADD COLUMN schedule_id TEXT;
ALTER TABLE jobs ADD COLUMN fire_time BIGINT;
CREATE UNIQUE INDEX jobs_schedule_fire ON jobs (schedule_id, fire_time) WHERE schedule_id IS NOT NULL;
