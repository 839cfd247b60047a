-- Times are milliseconds since the Unix epoch (UTC). JSON columns hold the
-- caller's JSON text unchanged.

CREATE TABLE spaces (
    id           TEXT PRIMARY KEY NOT NULL,
    name         TEXT NOT NULL,
    -- The space's public jobs:read:progress key. It is meant to be embedded
    -- in browsers, so it is kept readable (its hash is in tokens too).
    public_token TEXT NOT NULL,
    -- Last sequence number given to an event of this space.
    event_seq    INTEGER NOT NULL DEFAULT 0,
    created_at   INTEGER NOT NULL
);

CREATE TABLE tokens (
    id         TEXT PRIMARY KEY NOT NULL,
    space_id   TEXT NOT NULL REFERENCES spaces (id),
    name       TEXT NOT NULL,
    scopes     TEXT NOT NULL,          -- JSON array, as granted
    key_hash   BLOB NOT NULL UNIQUE,   -- SHA-256 of the key
    created_at INTEGER NOT NULL,
    revoked_at INTEGER
);
CREATE INDEX tokens_space ON tokens (space_id);

CREATE TABLE settings (
    name  TEXT PRIMARY KEY NOT NULL,
    value TEXT NOT NULL
);

CREATE TABLE jobs (
    id               TEXT PRIMARY KEY NOT NULL,  -- ULID: sorts by creation
    space_id         TEXT NOT NULL REFERENCES spaces (id),
    name             TEXT NOT NULL,
    payload          TEXT,
    status           TEXT NOT NULL,
    max_retries      INTEGER NOT NULL,
    attempt_number   INTEGER NOT NULL,
    timeout_seconds  INTEGER NOT NULL,
    scheduled_for    INTEGER,
    -- scheduled: release time; pending: available from; delivered: ack
    -- deadline; running: execution deadline; terminal: NULL.
    due_at           INTEGER,
    lease_id         TEXT,
    delivered_at     INTEGER,
    started_at       INTEGER,
    completed_at     INTEGER,
    result           TEXT,
    progress         TEXT,
    checkpoint       TEXT,
    last_error       TEXT,
    kill_reason      TEXT,
    callback_url     TEXT,
    callback_headers TEXT,                      -- JSON array of [name, value]
    backoff_kind     TEXT,
    backoff_delay    INTEGER,
    backoff_max      INTEGER,
    created_at       INTEGER NOT NULL,
    updated_at       INTEGER NOT NULL
);
CREATE INDEX jobs_space ON jobs (space_id, id);
CREATE INDEX jobs_space_status ON jobs (space_id, status, id);
-- Dispatch: oldest available pending job first.
CREATE INDEX jobs_ready ON jobs (space_id, due_at, id) WHERE status = 'pending';
-- Timers: the next scheduled release, ack deadline or execution deadline.
CREATE INDEX jobs_timers ON jobs (due_at) WHERE status IN ('scheduled', 'delivered', 'running');

CREATE TABLE job_events (
    space_id        TEXT NOT NULL,
    seq             INTEGER NOT NULL,
    job_id          TEXT NOT NULL,
    type            TEXT NOT NULL,
    status          TEXT NOT NULL,
    previous_status TEXT,
    data            TEXT,
    created_at      INTEGER NOT NULL,
    PRIMARY KEY (space_id, seq)
) WITHOUT ROWID;
CREATE INDEX job_events_job ON job_events (job_id, seq);

CREATE TABLE job_logs (
    job_id     TEXT NOT NULL,
    seq        INTEGER NOT NULL,
    level      TEXT NOT NULL,
    message    TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;
