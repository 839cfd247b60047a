-- Callbacks: an outbox written in the same transaction as the terminal
-- transition, so a committed completion always gets its callback, even
-- across a crash. Rows leave the outbox when delivered or given up.

CREATE TABLE callback_outbox (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    job_id     TEXT NOT NULL,
    space_id   TEXT NOT NULL,
    url        TEXT NOT NULL,
    headers    TEXT,              -- JSON array of [name, value]
    body       TEXT NOT NULL,     -- the JSON posted, fixed at the transition
    -- Tries made so far: the next try's retryAttempt.
    attempt    INTEGER NOT NULL DEFAULT 0,
    next_at    INTEGER NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX callback_outbox_due ON callback_outbox (next_at);

-- Standard Webhooks signing secret (whsec_...); NULL: callbacks unsigned.
ALTER TABLE spaces ADD COLUMN webhook_secret TEXT;
