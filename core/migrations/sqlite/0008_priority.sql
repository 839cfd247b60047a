-- Dispatch priority: ready jobs of a higher priority go first, then the one
-- ready longest. The ready-job index follows that order, so a delivery still
-- reads only the rows it hands out.
ALTER TABLE jobs ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
DROP INDEX jobs_ready;
CREATE INDEX jobs_ready ON jobs (space_id, priority DESC, due_at, id) WHERE status = 'pending';
