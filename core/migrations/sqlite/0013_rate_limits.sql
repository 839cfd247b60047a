-- Rate limits: one row per dispatch of a rate-limited job name, written in
-- the transaction that leases the job, counted over the limit's window and
-- deleted once older than it (so at most the limit's worth of rows per
-- name and key).
CREATE TABLE dispatches (
    space_id TEXT NOT NULL,
    name     TEXT NOT NULL,
    rate_key TEXT NOT NULL,
    at       INTEGER NOT NULL
);
CREATE INDEX dispatches_window ON dispatches (space_id, name, rate_key, at);
