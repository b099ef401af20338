-- HotMesh schema, version 5: generations (workflow.continue_as_new).
--
-- A job that continues as new keeps its id and its entity; its main thread's
-- history is deleted and starts again at index 0, with new arguments, as the
-- next generation. generation counts the ones before.
ALTER TABLE jobs ADD COLUMN IF NOT EXISTS generation integer NOT NULL DEFAULT 0;
