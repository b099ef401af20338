-- HotMesh schema, version 2: finished work is expired by dropping partitions.
--
-- Partitioning: jobs, threads, steps, entity_changes and signals are
-- LIST-partitioned by `bucket`, chosen once when the row is written and never
-- changed:
--
--   'keep'       jobs started without expire (kept until removed by hand);
--   'dYYYYMMDD'  jobs started with an expire, by the UTC day of
--                created_at + expire, i.e. the day they expire on if they finish
--                at once; all their threads, steps and entity changes follow
--                them. Signals by the day they expire on.
--   'later'      (signals only) and 'keep' (expiring jobs) take what arrives
--                when its day partition does not exist yet: the hot path never
--                creates a partition.
--
-- The maintenance pass (hm_maintain, run by every worker's expiry loop) makes
-- the day partitions for the expire values in use ahead of time; once a day is
-- over and every job in its partitions has finished and expired, the backend
-- detaches them CONCURRENTLY and drops them (PostgresBackend.maintain, with
-- hm_droppable): a day of expired work goes in one piece, never a DELETE per row.
-- Expiring jobs that landed in 'keep', and the expired jobs of a partition that
-- a long-running job keeps alive for more than a day past its day, are deleted
-- row by row. A job is therefore kept at least `expire`, and removed at the
-- latest about a day after its bucket's day ends (later if it ran longer).
--
-- Rows never move between partitions (a move would cost more than the DELETE
-- it replaces, see bench/expiry.py), so nothing races a move. Time ranges by
-- creation day alone were rejected: jobs kept for an hour and for a month
-- would share a partition. Because the partition key must be part of every
-- unique index, job id uniqueness across buckets is kept by the start
-- statement, which looks for the id in every bucket (PgStore.create_job).
--
-- Queue tables stay unpartitioned: a task row is deleted in the transaction
-- that acks it and a waiter when it is answered, so they hold no finished work,
-- and one unique index over all unclaimed runs must span the table.
--
-- Existing rows are copied into 'keep'; user indexes on jobs are recreated.

DO $$
DECLARE
    t          text;
    -- A partitioned table's index reads "ON ONLY jobs": recreated on every partition.
    user_index text[] := ARRAY(
        SELECT replace(indexdef, ' ON ONLY ', ' ON ') FROM pg_indexes
         WHERE schemaname = current_schema() AND tablename = 'jobs'
           AND indexname NOT IN ('jobs_pkey', 'jobs_entity_created', 'jobs_parent', 'jobs_expiry'));
    definition text;
BEGIN
    FOREACH t IN ARRAY ARRAY['jobs', 'threads', 'steps', 'entity_changes', 'signals'] LOOP
        EXECUTE format('ALTER TABLE %I RENAME TO %I', t, t || '_v1');
        EXECUTE format('ALTER TABLE %I RENAME CONSTRAINT %I TO %I', t || '_v1', t || '_pkey', t || '_v1_pkey');
    END LOOP;
    DROP INDEX jobs_entity_created, jobs_parent, jobs_expiry, signals_signal;
    ALTER SEQUENCE signals_id_seq OWNED BY NONE;

    CREATE TABLE jobs (
        id               text        NOT NULL,
        entity           text        NOT NULL,
        workflow_name    text        NOT NULL,
        task_queue       text        NOT NULL,
        args             jsonb       NOT NULL DEFAULT '[]',
        status           text        NOT NULL DEFAULT 'pending',
        context          jsonb       NOT NULL DEFAULT '{}',
        version          bigint      NOT NULL DEFAULT 0,
        result           jsonb,
        error            jsonb,
        parent_id        text,
        parent_dimension text,
        parent_index     integer,
        persistent       boolean     NOT NULL DEFAULT false,
        search           jsonb       NOT NULL DEFAULT '{}',
        expire           double precision,
        created_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
        updated_at       timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at      timestamptz,
        bucket           text        NOT NULL DEFAULT 'keep',
        PRIMARY KEY (id, bucket)
    ) PARTITION BY LIST (bucket);
    CREATE INDEX jobs_entity_created ON jobs (entity, created_at);
    CREATE INDEX jobs_parent ON jobs (parent_id) WHERE parent_id IS NOT NULL;
    CREATE INDEX jobs_expiry ON jobs (finished_at) WHERE expire IS NOT NULL;

    CREATE TABLE threads (
        job_id        text        NOT NULL,
        dimension     text        NOT NULL,
        workflow_name text        NOT NULL,
        task_queue    text        NOT NULL,
        args          jsonb       NOT NULL DEFAULT '[]',
        status        text        NOT NULL DEFAULT 'running',
        signal_id     text,
        error         jsonb,
        created_at    timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at   timestamptz,
        bucket        text        NOT NULL DEFAULT 'keep',
        PRIMARY KEY (job_id, dimension, bucket)
    ) PARTITION BY LIST (bucket);

    CREATE TABLE steps (
        job_id      text        NOT NULL,
        dimension   text        NOT NULL,
        idx         integer     NOT NULL,
        kind        text        NOT NULL,
        name        text        NOT NULL,
        args        jsonb,
        status      text        NOT NULL,
        result      jsonb,
        error       jsonb,
        attempts    integer     NOT NULL DEFAULT 0,
        wake_queue  text        NOT NULL,
        wake_name   text        NOT NULL,
        started_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
        finished_at timestamptz,
        bucket      text        NOT NULL DEFAULT 'keep',
        PRIMARY KEY (job_id, dimension, idx, bucket)
    ) PARTITION BY LIST (bucket);

    CREATE TABLE entity_changes (
        job_id    text        NOT NULL,
        version   bigint      NOT NULL,
        op        text        NOT NULL,
        path      text,
        value     jsonb,
        dimension text,
        idx       integer,
        at        timestamptz NOT NULL DEFAULT clock_timestamp(),
        bucket    text        NOT NULL DEFAULT 'keep',
        PRIMARY KEY (job_id, version, bucket)
    ) PARTITION BY LIST (bucket);

    CREATE TABLE signals (
        id         bigint      NOT NULL DEFAULT nextval('signals_id_seq'),
        signal_id  text        NOT NULL,
        data       jsonb,
        expires_at timestamptz NOT NULL,
        created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
        bucket     text        NOT NULL DEFAULT 'later',
        PRIMARY KEY (id, bucket)
    ) PARTITION BY LIST (bucket);
    ALTER SEQUENCE signals_id_seq OWNED BY signals.id;
    CREATE INDEX signals_signal ON signals (signal_id, id);

    FOREACH t IN ARRAY ARRAY['jobs', 'threads', 'steps', 'entity_changes'] LOOP
        EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES IN (%L)', t || '_keep', t, 'keep');
    END LOOP;
    CREATE TABLE signals_later PARTITION OF signals FOR VALUES IN ('later');

    INSERT INTO jobs (id, entity, workflow_name, task_queue, args, status, context, version,
                      result, error, parent_id, parent_dimension, parent_index, persistent,
                      search, expire, created_at, updated_at, finished_at)
    SELECT id, entity, workflow_name, task_queue, args, status, context, version,
           result, error, parent_id, parent_dimension, parent_index, persistent,
           search, expire, created_at, updated_at, finished_at FROM jobs_v1;
    INSERT INTO threads (job_id, dimension, workflow_name, task_queue, args, status, signal_id,
                         error, created_at, finished_at)
    SELECT job_id, dimension, workflow_name, task_queue, args, status, signal_id,
           error, created_at, finished_at FROM threads_v1;
    INSERT INTO steps (job_id, dimension, idx, kind, name, args, status, result, error,
                       attempts, wake_queue, wake_name, started_at, finished_at)
    SELECT job_id, dimension, idx, kind, name, args, status, result, error,
           attempts, wake_queue, wake_name, started_at, finished_at FROM steps_v1;
    INSERT INTO entity_changes (job_id, version, op, path, value, dimension, idx, at)
    SELECT job_id, version, op, path, value, dimension, idx, at FROM entity_changes_v1;
    INSERT INTO signals (id, signal_id, data, expires_at, created_at)
    SELECT id, signal_id, data, expires_at, created_at FROM signals_v1;

    DROP TABLE jobs_v1, threads_v1, steps_v1, entity_changes_v1, signals_v1;
    FOREACH definition IN ARRAY user_index LOOP
        EXECUTE definition;
    END LOOP;
END
$$;

-- The day bucket of an instant: 'd' and its UTC date.
CREATE FUNCTION hm_day_bucket(at timestamptz) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT 'd' || to_char(at AT TIME ZONE 'UTC', 'YYYYMMDD')
$$;

-- The bucket of a row of `p_table` expiring at `p_at`: its day if that
-- partition exists, `p_fallback` otherwise.
CREATE FUNCTION hm_bucket(p_table text, p_at timestamptz, p_fallback text) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT CASE WHEN p_at IS NULL
                  OR to_regclass(quote_ident(p_table || '_' || hm_day_bucket(p_at))) IS NULL
                THEN p_fallback ELSE hm_day_bucket(p_at) END
$$;

-- Make sure `<table>_<bucket>` exists as a partition. Created apart and then
-- attached: ATTACH takes a lock that lets reads and writes go on.
CREATE FUNCTION hm_ensure_partition(p_table text, p_bucket text) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    name text := p_table || '_' || p_bucket;
BEGIN
    IF p_bucket !~ '^d[0-9]{8}$' THEN
        RAISE EXCEPTION 'not a day bucket: %', quote_literal(p_bucket);
    END IF;
    IF to_regclass(quote_ident(name)) IS NOT NULL THEN
        RETURN;
    END IF;
    EXECUTE format('CREATE TABLE %I (LIKE %I INCLUDING DEFAULTS)', name, p_table);
    EXECUTE format('ALTER TABLE %I ATTACH PARTITION %I FOR VALUES IN (%L)', p_table, name, p_bucket);
END
$$;

-- The expire values in use, in whole days (however many distinct values jobs
-- use, at most one row per day of retention), so that their coming days'
-- partitions exist before jobs need them. Kept while those receive jobs.
CREATE TABLE expire_days (
    days    integer     PRIMARY KEY,
    seen_at timestamptz NOT NULL
);

-- Delete expired jobs of one bucket row by row, with their history.
CREATE FUNCTION hm_delete_expired(p_bucket text, p_now timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    removed bigint;
BEGIN
    WITH gone AS (
        DELETE FROM jobs
         WHERE bucket = p_bucket AND expire IS NOT NULL AND finished_at IS NOT NULL
           AND status IN ('completed', 'failed', 'interrupted')
           AND finished_at + make_interval(secs => expire) <= p_now
        RETURNING id),
    s AS (DELETE FROM steps WHERE bucket = p_bucket AND job_id IN (SELECT id FROM gone)),
    h AS (DELETE FROM threads WHERE bucket = p_bucket AND job_id IN (SELECT id FROM gone)),
    c AS (DELETE FROM entity_changes WHERE bucket = p_bucket AND job_id IN (SELECT id FROM gone))
    SELECT count(*) INTO removed FROM gone;
    RETURN removed;
END
$$;

-- One maintenance pass, as of `p_now`; returns how many jobs it deleted.
--  1. Expired jobs in 'keep' (started before their day's partition existed)
--     are deleted row by row.
--  2. Partitions are made for the coming days of every expire value in use
--     (learnt from the jobs that landed in 'keep'), and for signals.
--  3. A day partition still held a day after its day (a job in it runs on,
--     or has not expired) has its expired jobs deleted row by row meanwhile.
-- Dropping the partitions of days that are over is not done here: a DROP
-- needs an exclusive lock on the parent, which under load queues behind (and
-- in front of) the workload's transactions. PostgresBackend.maintain detaches
-- them CONCURRENTLY after this commits, then drops the detached tables
-- (hm_droppable lists them). Passes from several workers take turns (a
-- try-lock: a busy pass is skipped).
CREATE FUNCTION hm_maintain(p_now timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    removed  bigint := 0;
    b        text;
    t        text;
    offset_d integer;
    history  text[] := ARRAY['jobs', 'threads', 'steps', 'entity_changes'];
BEGIN
    IF NOT pg_try_advisory_xact_lock(hashtextextended(current_schema() || ':maintain', 7)) THEN
        RETURN 0;
    END IF;

    removed := hm_delete_expired('keep', p_now);

    -- A job started now with an expire of d days and a fraction lands in the
    -- bucket d or d + 1 days on; tomorrow's, one day later: three days ahead.
    INSERT INTO expire_days (days, seen_at)
    SELECT DISTINCT floor(expire / 86400)::integer, p_now
      FROM jobs WHERE bucket = 'keep' AND expire IS NOT NULL
    ON CONFLICT (days) DO UPDATE SET seen_at = excluded.seen_at;
    FOR offset_d IN SELECT days FROM expire_days LOOP
        FOR b IN SELECT hm_day_bucket(p_now + make_interval(days => offset_d + n))
                   FROM generate_series(0, 1) n LOOP
            IF to_regclass(quote_ident('jobs_' || b)) IS NOT NULL THEN
                EXECUTE format('UPDATE expire_days SET seen_at = $1 WHERE days = $2'
                               ' AND EXISTS (SELECT 1 FROM %I)', 'jobs_' || b)
                   USING p_now, offset_d;
            END IF;
        END LOOP;
    END LOOP;
    DELETE FROM expire_days WHERE seen_at < p_now - interval '7 days';
    FOR b IN
        SELECT DISTINCT hm_day_bucket(p_now + make_interval(days => days + n))
          FROM expire_days, generate_series(0, 2) n
    LOOP
        FOREACH t IN ARRAY history LOOP
            PERFORM hm_ensure_partition(t, b);
        END LOOP;
    END LOOP;

    DELETE FROM signals WHERE bucket = 'later' AND expires_at <= p_now;
    FOR b IN SELECT hm_day_bucket(p_now + make_interval(days => n)) FROM generate_series(0, 2) n LOOP
        PERFORM hm_ensure_partition('signals', b);
    END LOOP;

    FOR b IN SELECT p.bucket FROM hm_day_partitions() p
              WHERE p.bucket < hm_day_bucket(p_now - interval '1 day') AND hm_held(p.bucket, p_now)
    LOOP
        removed := removed + hm_delete_expired(b, p_now);
    END LOOP;
    RETURN removed;
END
$$;

-- The day buckets that have a partition in any of the partitioned tables.
CREATE FUNCTION hm_day_partitions() RETURNS TABLE (bucket text)
LANGUAGE sql STABLE AS $$
    SELECT DISTINCT substring(c.relname FROM '_(d[0-9]{8})$')
      FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
     WHERE i.inhparent IN ('jobs'::regclass, 'threads'::regclass, 'steps'::regclass,
                           'entity_changes'::regclass, 'signals'::regclass)
       AND c.relname ~ '_d[0-9]{8}$'
     ORDER BY 1
$$;

-- Whether a day's jobs partition still holds a job that is unfinished or not
-- yet expired as of `p_now`.
CREATE FUNCTION hm_held(p_bucket text, p_now timestamptz) RETURNS boolean
LANGUAGE plpgsql STABLE AS $$
DECLARE
    held boolean := false;
BEGIN
    IF to_regclass(quote_ident('jobs_' || p_bucket)) IS NOT NULL THEN
        EXECUTE format('SELECT EXISTS (SELECT 1 FROM %I WHERE finished_at IS NULL'
                       ' OR finished_at + make_interval(secs => expire) > $1)', 'jobs_' || p_bucket)
           INTO held USING p_now;
    END IF;
    RETURN held;
END
$$;

-- The day buckets whose partitions can go as of `p_now` (the day is over and
-- every job in them expired), with how many jobs each holds.
CREATE FUNCTION hm_droppable(p_now timestamptz) RETURNS TABLE (bucket text, jobs bigint)
LANGUAGE plpgsql STABLE AS $$
DECLARE
    b text;
BEGIN
    FOR b IN SELECT p.bucket FROM hm_day_partitions() p
              WHERE p.bucket < hm_day_bucket(p_now) AND NOT hm_held(p.bucket, p_now)
    LOOP
        bucket := b;
        jobs := 0;
        IF to_regclass(quote_ident('jobs_' || b)) IS NOT NULL THEN
            EXECUTE format('SELECT count(*) FROM %I', 'jobs_' || b) INTO jobs;
        END IF;
        RETURN NEXT;
    END LOOP;
END
$$;

-- Entity operations now record their change in the bucket of their job, and
-- look for the job in `p_bucket` first when the caller knows it (one partition
-- instead of all of them).
DROP FUNCTION hm_apply_entity(text, text, text, jsonb, text, integer);
CREATE FUNCTION hm_apply_entity(p_job text, p_op text, p_path text, p_value jsonb,
                                p_dimension text, p_index integer, p_bucket text,
                                OUT result jsonb, OUT new_version bigint)
LANGUAGE plpgsql AS $$
DECLARE
    doc      jsonb;
    new_doc  jsonb;
    cur      jsonb;
    job_bucket text;
    parts    text[] := string_to_array(p_path, '.');
    changed  boolean := true;
BEGIN
    IF p_bucket IS NOT NULL THEN
        SELECT j.context, j.version, j.bucket INTO doc, new_version, job_bucket
          FROM jobs j WHERE j.id = p_job AND j.bucket = p_bucket FOR UPDATE;
    END IF;
    IF job_bucket IS NULL THEN
        SELECT j.context, j.version, j.bucket INTO doc, new_version, job_bucket
          FROM jobs j WHERE j.id = p_job FOR UPDATE;
    END IF;
    IF job_bucket IS NULL THEN
        RAISE EXCEPTION 'no workflow with id %', quote_literal(p_job) USING ERRCODE = 'HM002';
    END IF;
    IF p_op = 'set' THEN
        IF jsonb_typeof(p_value) IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION 'entity.set takes an object (dict)' USING ERRCODE = 'HM001';
        END IF;
        new_doc := p_value;
        result := p_value;
    ELSIF p_op = 'merge' THEN
        IF jsonb_typeof(p_value) IS DISTINCT FROM 'object' THEN
            RAISE EXCEPTION 'entity.merge takes an object (dict)' USING ERRCODE = 'HM001';
        END IF;
        new_doc := hm_deep_merge(doc, p_value);
        result := new_doc;
    ELSIF p_op = 'get' THEN
        changed := false;
        result := CASE WHEN p_path IS NULL THEN doc ELSE coalesce(hm_get_path(doc, parts), 'null') END;
    ELSIF p_path IS NULL THEN
        RAISE EXCEPTION 'entity.% needs a path', p_op USING ERRCODE = 'HM001';
    ELSE
        cur := hm_get_path(doc, parts);
        IF p_op = 'delete' THEN
            IF cur IS NULL THEN
                changed := false;
                result := 'null';
            ELSE
                new_doc := doc #- parts;
                result := cur;
            END IF;
        ELSIF p_op = 'set_if_not_exists' THEN
            IF cur IS NOT NULL THEN
                changed := false;
                result := cur;
            ELSE
                new_doc := hm_set_path(doc, parts, p_value, p_path);
                result := p_value;
            END IF;
        ELSIF p_op IN ('append', 'prepend') THEN
            IF cur IS NULL OR jsonb_typeof(cur) = 'null' THEN
                cur := '[]';
            END IF;
            IF jsonb_typeof(cur) <> 'array' THEN
                RAISE EXCEPTION 'entity.%: % holds a non-list', p_op, quote_literal(p_path)
                    USING ERRCODE = 'HM001';
            END IF;
            result := CASE WHEN p_op = 'append' THEN cur || jsonb_build_array(p_value)
                           ELSE jsonb_build_array(p_value) || cur END;
            new_doc := hm_set_path(doc, parts, result, p_path);
        ELSIF p_op = 'increment' THEN
            IF jsonb_typeof(p_value) IS DISTINCT FROM 'number' THEN
                RAISE EXCEPTION 'entity.increment: ''by'' must be a number' USING ERRCODE = 'HM001';
            END IF;
            IF cur IS NULL OR jsonb_typeof(cur) = 'null' THEN
                cur := '0';
            END IF;
            IF jsonb_typeof(cur) <> 'number' THEN
                RAISE EXCEPTION 'entity.increment: % holds a non-number', quote_literal(p_path)
                    USING ERRCODE = 'HM001';
            END IF;
            result := to_jsonb(cur::numeric + p_value::numeric);
            new_doc := hm_set_path(doc, parts, result, p_path);
        ELSIF p_op = 'toggle' THEN
            IF cur IS NULL OR jsonb_typeof(cur) = 'null' THEN
                cur := 'false';
            END IF;
            IF jsonb_typeof(cur) <> 'boolean' THEN
                RAISE EXCEPTION 'entity.toggle: % holds a non-boolean', quote_literal(p_path)
                    USING ERRCODE = 'HM001';
            END IF;
            result := to_jsonb(NOT cur::boolean);
            new_doc := hm_set_path(doc, parts, result, p_path);
        ELSE
            RAISE EXCEPTION 'unknown entity operation %', quote_literal(p_op) USING ERRCODE = 'HM001';
        END IF;
    END IF;
    IF changed THEN
        new_version := new_version + 1;
        UPDATE jobs SET context = new_doc, version = new_version, updated_at = clock_timestamp()
         WHERE id = p_job AND bucket = job_bucket;
        INSERT INTO entity_changes (job_id, version, op, path, value, dimension, idx, bucket)
        VALUES (p_job, new_version, p_op, p_path, p_value, p_dimension, p_index, job_bucket);
    END IF;
END
$$;
