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
