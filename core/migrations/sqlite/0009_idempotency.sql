-- Idempotency keys of creates: a key names the job it created and a hash of
-- the request, until it expires. Claimed in the create's own transaction.
CREATE TABLE idempotency_keys (
    space_id TEXT NOT NULL,
    key TEXT NOT NULL,
    job_id TEXT NOT NULL,
    request_hash BLOB NOT NULL,
    expires_at INTEGER NOT NULL,
    PRIMARY KEY (space_id, key)
);
CREATE INDEX idempotency_keys_expiry ON idempotency_keys (space_id, expires_at);
