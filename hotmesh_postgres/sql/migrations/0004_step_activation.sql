-- HotMesh schema, version 4: the activation in which a step's answer reached
-- its workflow.
--
-- Replay hands recorded answers back to the workflow activation by activation
-- (the runs of a thread, in order), each activation's answers in index order,
-- so the branches of an asyncio.gather interleave on replay exactly as they did
-- the first time (hotmesh_core/replay.py). NULL: answered, not yet delivered
-- (or never answered). Set once, by the run that delivers it, "if still NULL":
-- two runs racing to deliver cannot both succeed.
ALTER TABLE steps ADD COLUMN IF NOT EXISTS activation integer;

-- The last activation each thread delivered: the main thread's on its job row,
-- a hook's on its thread row. A run delivering activation n moves it from n-1
-- to n with one conditional UPDATE (a compare-and-set on one row), so two runs
-- racing to deliver activation n cannot both succeed, whichever steps each
-- delivers: the second waits for the first's row lock, then finds n.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS activation integer NOT NULL DEFAULT 0;
ALTER TABLE threads ADD COLUMN IF NOT EXISTS activation integer NOT NULL DEFAULT 0;
