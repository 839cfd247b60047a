-- SQLite evaluates a constant IN list of three or more values through a
-- temporary b-tree, and it evaluates a partial index's condition for every
-- row it inserts or updates: each job row written filled four of them. The
-- same conditions written as ORs compare in place. Queries that use these
-- indexes repeat the conditions word for word (`store::rows`), as SQLite
-- requires.
DROP INDEX jobs_timers;
CREATE INDEX jobs_timers ON jobs (due_at)
    WHERE status = 'scheduled' OR status = 'delivered' OR status = 'running';
DROP INDEX jobs_finished;
CREATE INDEX jobs_finished ON jobs (space_id, status, completed_at)
    WHERE status = 'completed' OR status = 'dead' OR status = 'killed';
