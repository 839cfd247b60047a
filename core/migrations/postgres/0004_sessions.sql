-- Dashboard sessions: a browser signs in with a key and holds a random
-- session token in a cookie. Only the token's SHA-256 is stored, with the
-- hash of the key it stands for, so revoking the key ends its sessions.
CREATE TABLE sessions (
    id_hash BYTEA PRIMARY KEY,
    key_hash BYTEA NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX sessions_key ON sessions (key_hash, created_at);
CREATE INDEX sessions_expiry ON sessions (expires_at);
