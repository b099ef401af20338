-- HotMesh schema, version 7: sticky runs.
--
-- A worker that keeps a suspended run in its cache names itself on the steps
-- the run issues (steps.wake_worker); the run task an answer wakes carries it
-- (tasks.sticky), and other workers leave that task to it for a few seconds
-- (the claim's sticky_wait), or take it at once when it has stopped.
ALTER TABLE steps ADD COLUMN IF NOT EXISTS wake_worker text;
ALTER TABLE tasks ADD COLUMN IF NOT EXISTS sticky text;

-- Workers that stopped (gracefully): their sticky run tasks are anyone's at
-- once. A worker that dies is not here: its tasks go after the claim's wait.
CREATE TABLE IF NOT EXISTS stopped_workers (
    queue      text        NOT NULL,
    worker     text        NOT NULL,
    stopped_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (queue, worker)
);
