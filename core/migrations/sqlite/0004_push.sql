-- Push wake-ups: a space may name a URL that is told when a job becomes
-- ready, optionally only for some job names, with headers of its own.
ALTER TABLE spaces ADD COLUMN push_url TEXT;
ALTER TABLE spaces ADD COLUMN push_names TEXT;    -- JSON array; NULL or []: every job
ALTER TABLE spaces ADD COLUMN push_headers TEXT;  -- JSON array of [name, value]
