-- Dashboard sessions: a browser signs in with a key and holds a random
-- session token in a cookie. Only the token's SHA-256 is stored, with the
-- hash of the key it stands for, so revoking the key ends its sessions.
CREATE TABLE sessions (
    id_hash BLOB PRIMARY KEY,
    key_hash BLOB NOT NULL,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX sessions_key ON sessions (key_hash, created_at);
CREATE INDEX sessions_expiry ON sessions (expires_at);
