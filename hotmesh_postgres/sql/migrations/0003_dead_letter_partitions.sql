-- HotMesh schema, version 3: dead letters expire by partition too.
--
-- A dead letter (a task the engine failed on too often; its job has failed
-- with TaskDeadLettered) is kept for inspection (hotmesh_core.models.
-- DEAD_LETTER_KEEP, 30 days, passed in by the backend), then goes with its
-- day's partition like the rest of finished work (0002): LIST-partitioned by
-- the UTC day it expires on, 'later' when that day has no partition yet (those
-- rows are deleted one by one once expired). The maintenance pass makes the
-- partitions ahead and PostgresBackend.maintain detaches and drops past days.

ALTER TABLE dead_letters RENAME TO dead_letters_v1;
ALTER TABLE dead_letters_v1 RENAME CONSTRAINT dead_letters_pkey TO dead_letters_v1_pkey;

CREATE TABLE dead_letters (
    id         bigint      NOT NULL,
    task       jsonb       NOT NULL,
    error      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    expires_at timestamptz NOT NULL,
    bucket     text        NOT NULL DEFAULT 'later',
    PRIMARY KEY (id, bucket)
) PARTITION BY LIST (bucket);
CREATE TABLE dead_letters_later PARTITION OF dead_letters FOR VALUES IN ('later');

INSERT INTO dead_letters (id, task, error, created_at, expires_at)
SELECT id, task, error, created_at, created_at + interval '30 days' FROM dead_letters_v1;
DROP TABLE dead_letters_v1;

-- The dead letters' part of a maintenance pass: make the partitions of the
-- days new dead letters expire on, delete expired ones that have none. Takes
-- the pass's try-lock (already held when called after hm_maintain).
CREATE FUNCTION hm_maintain_dead_letters(p_now timestamptz, p_keep double precision)
RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    b text;
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(current_schema() || ':maintain', 7)) THEN
        RETURN;
    END IF;
    FOR b IN SELECT hm_day_bucket(p_now + make_interval(days => n))
               FROM generate_series(floor(p_keep / 86400)::integer,
                                    floor(p_keep / 86400)::integer + 1) n LOOP
        PERFORM hm_ensure_partition('dead_letters', b);
    END LOOP;
    DELETE FROM dead_letters WHERE bucket = 'later' AND expires_at <= p_now;
END
$$;

-- The day buckets that have a partition in any of the partitioned tables.
CREATE OR REPLACE FUNCTION hm_day_partitions() RETURNS TABLE (bucket text)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT substring(c.relname FROM '_(d[0-9]{8})$')
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent IN ('jobs'::regclass, 'threads'::regclass, 'steps'::regclass,
                           'entity_changes'::regclass, 'signals'::regclass,
                           'dead_letters'::regclass)
       AND c.relname ~ '_d[0-9]{8}$'
     ORDER BY 1
$$;
