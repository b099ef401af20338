-- HotMesh schema, version 11: worker presence.
--
-- Each worker announces what it serves (its queue, workflow and activity names)
-- when it starts and then every few seconds; `hotmesh runs show` reads this to
-- say why a job waits ("no worker has registered workflow X on queue Y in the
-- last N s"). A worker that stops cleanly removes its row; a dead one's row
-- just stops being refreshed.
CREATE TABLE IF NOT EXISTS workers (
    queue text NOT NULL,
    worker_id text NOT NULL,
    workflows text[] NOT NULL DEFAULT '{}',
    activities text[] NOT NULL DEFAULT '{}',
    started_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    last_seen timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (queue, worker_id)
);
