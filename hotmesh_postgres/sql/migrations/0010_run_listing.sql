-- HotMesh schema, version 10: indexes for paging through runs newest first
-- (PgStore.page_jobs, the runs table of `hotmesh ui`).
--
-- A page is "ORDER BY created_at DESC, id DESC LIMIT n" after the previous
-- page's last (created_at, id): keyset pagination, never OFFSET, so page 1000
-- costs what page 1 does. Over a million jobs that needs an index whose order
-- is the listing's; on the LIST-partitioned jobs table each partition gets it
-- and the planner merges the partitions' index scans (Merge Append). Status is
-- the filter people use most (failed runs), and a rare status would otherwise
-- be found by walking the whole time index, so it has an index of its own.
-- Entity type uses jobs_entity_created. Both are b-trees read backwards.
-- Each costs an index entry per started job and per status change (a status
-- change was already not a HOT update for most jobs: finished_at is indexed).

CREATE INDEX IF NOT EXISTS jobs_created_id ON jobs (created_at, id);
CREATE INDEX IF NOT EXISTS jobs_status_created_id ON jobs (status, created_at, id);
