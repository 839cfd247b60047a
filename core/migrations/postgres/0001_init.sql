-- PostgreSQL schema: the same model as SQLite's, shared by every core
-- replica. Times are milliseconds since the Unix epoch (UTC). JSON columns
-- hold the caller's JSON text unchanged.

CREATE TABLE spaces (
    id                         TEXT PRIMARY KEY,
    name                       TEXT NOT NULL,
    -- The space's public jobs:read:progress key, meant for browsers.
    public_token               TEXT NOT NULL,
    -- The space's head: last event sequence number and job counts. A writer
    -- locks this row while it numbers a batch's events, so every replica
    -- sees one sequence, and counts move with it.
    event_seq                  BIGINT NOT NULL DEFAULT 0,
    count_scheduled            BIGINT NOT NULL DEFAULT 0,
    count_pending              BIGINT NOT NULL DEFAULT 0,
    count_delivered            BIGINT NOT NULL DEFAULT 0,
    count_running              BIGINT NOT NULL DEFAULT 0,
    count_completed            BIGINT NOT NULL DEFAULT 0,
    count_dead                 BIGINT NOT NULL DEFAULT 0,
    count_killed               BIGINT NOT NULL DEFAULT 0,
    stream_id                  TEXT NOT NULL,
    anonymous_progress_streams BOOLEAN NOT NULL DEFAULT FALSE,
    webhook_secret             TEXT,
    push_url                   TEXT,
    push_names                 TEXT,   -- JSON array; NULL or []: every job
    push_headers               TEXT,   -- JSON array of [name, value]
    created_at                 BIGINT NOT NULL
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    space_id   TEXT NOT NULL REFERENCES spaces (id),
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,          -- JSON array, as granted
    key_hash   BYTEA NOT NULL UNIQUE,  -- SHA-256 of the key
    created_at BIGINT NOT NULL,
    revoked_at BIGINT
);
CREATE INDEX tokens_space ON tokens (space_id);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY,
    value TEXT NOT NULL
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY,  -- ULID: sorts by creation
    space_id         TEXT NOT NULL REFERENCES spaces (id),
    name             TEXT NOT NULL,
    payload          TEXT,
    status           TEXT NOT NULL,
    max_retries      BIGINT NOT NULL,
    attempt_number   BIGINT NOT NULL,
    timeout_seconds  BIGINT NOT NULL,
    scheduled_for    BIGINT,
    -- scheduled: release time; pending: available from; delivered: ack
    -- deadline; running: execution deadline; terminal: NULL.
    due_at           BIGINT,
    lease_id         TEXT,
    delivered_at     BIGINT,
    started_at       BIGINT,
    completed_at     BIGINT,
    result           TEXT,
    progress         TEXT,
    checkpoint       TEXT,
    last_error       TEXT,
    kill_reason      TEXT,
    callback_url     TEXT,
    callback_headers TEXT,              -- JSON array of [name, value]
    backoff_kind     TEXT,
    backoff_delay    BIGINT,
    backoff_max      BIGINT,
    created_at       BIGINT NOT NULL,
    updated_at       BIGINT NOT NULL
);
CREATE INDEX jobs_space ON jobs (space_id, id);
CREATE INDEX jobs_space_status ON jobs (space_id, status, id);
-- Dispatch: oldest available pending job first (claimed FOR UPDATE SKIP LOCKED).
CREATE INDEX jobs_ready ON jobs (space_id, due_at, id) WHERE status = 'pending';
-- Timers: the next scheduled release, ack deadline or execution deadline.
CREATE INDEX jobs_timers ON jobs (due_at) WHERE status IN ('scheduled', 'delivered', 'running');

CREATE TABLE job_events (
    space_id        TEXT NOT NULL,
    seq             BIGINT NOT NULL,
    job_id          TEXT NOT NULL,
    type            TEXT NOT NULL,
    status          TEXT NOT NULL,
    previous_status TEXT,
    data            TEXT,
    -- The space's counts right after this event, when it changed them:
    -- what a replica that did not write the event needs to relay it.
    counts          TEXT,     -- JSON array in JobStatus::ALL order
    created_at      BIGINT NOT NULL,
    PRIMARY KEY (space_id, seq)
);
CREATE INDEX job_events_job ON job_events (job_id, seq);

CREATE TABLE job_logs (
    job_id     TEXT NOT NULL,
    seq        BIGINT NOT NULL,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (job_id, seq)
);

-- Callbacks: written in the same transaction as the terminal transition.
-- A replica claims due entries by pushing next_at ahead (FOR UPDATE SKIP
-- LOCKED), so two replicas never send the same try; a replica that dies
-- mid-try leaves the entry to come due again.
CREATE TABLE callback_outbox (
    id         BIGSERIAL PRIMARY KEY,
    job_id     TEXT NOT NULL,
    space_id   TEXT NOT NULL,
    url        TEXT NOT NULL,
    headers    TEXT,
    body       TEXT NOT NULL,
    attempt    BIGINT NOT NULL DEFAULT 0,
    next_at    BIGINT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX callback_outbox_due ON callback_outbox (next_at);
