-- Which spaces hold keyed jobs: the writer reads it once per space, and a
-- delivery in a space without any skips its search for ready keys. Only
-- inserts and deletes of keyed jobs touch it (a job's key never changes).
CREATE INDEX jobs_keyed ON jobs (space_id) WHERE concurrency_key IS NOT NULL;
