-- Retention: finished jobs are deleted after an age per status. A space may
-- override the server's ages: JSON {"completed": seconds, ...}, 0 keeping
-- jobs forever; NULL or a missing status: the server's age.
ALTER TABLE spaces ADD COLUMN retention TEXT;
-- The sweeper's scan: one space's jobs of one finished status, oldest end first.
CREATE INDEX jobs_finished ON jobs (space_id, status, completed_at)
    WHERE status IN ('completed', 'dead', 'killed');
-- A job is pruned only once its callback is delivered or given up.
CREATE INDEX callback_outbox_job ON callback_outbox (job_id);
