-- A space's listing of every status merges its statuses' (space_id, status,
-- id) ranges instead (see `store::filter::newest_first`): one index entry
-- fewer for every job written, and on PostgreSQL, where a status change is
-- never a HOT update, for every transition too.
DROP INDEX jobs_space;
