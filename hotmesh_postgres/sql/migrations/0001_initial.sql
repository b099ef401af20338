-- HotMesh schema, version 1. Applied with search_path set to the app's schema.
--
-- Partitioning: jobs, steps, threads and entity_changes are HASH-partitioned
-- by job id (8 partitions). Every hot query is by job id, the job id must stay
-- unique across the table (idempotent start), and a durable job can live for
-- months, so time partitions could not be dropped without cutting the history
-- of live jobs. Finished work is removed by job (expire=), and each partition
-- can be detached for maintenance. Queue rows (tasks) are deleted on ack: a
-- small, hot heap that autovacuum keeps tight.

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
    PRIMARY KEY (id)
) PARTITION BY HASH (id);

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
    PRIMARY KEY (job_id, dimension)
) PARTITION BY HASH (job_id);

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
    PRIMARY KEY (job_id, dimension, idx)
) PARTITION BY HASH (job_id);

CREATE TABLE entity_changes (
    job_id    text        NOT NULL,
    version   bigint      NOT NULL,
    op        text        NOT NULL,
    path      text,
    value     jsonb,
    dimension text,
    idx       integer,
    at        timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, version)
) PARTITION BY HASH (job_id);

DO $$
DECLARE
    t text;
    i integer;
BEGIN
    FOREACH t IN ARRAY ARRAY['jobs', 'threads', 'steps', 'entity_changes'] LOOP
        FOR i IN 0..7 LOOP
            EXECUTE format('CREATE TABLE %I PARTITION OF %I FOR VALUES WITH (MODULUS 8, REMAINDER %s)',
                           t || '_p' || i, t, i);
        END LOOP;
    END LOOP;
END
$$;

-- Task queues. A leased task has visible_at = end of its lease, so "claimable"
-- is one condition (visible_at <= now) for new, delayed and orphaned tasks alike.
CREATE TABLE tasks (
    id          bigserial   PRIMARY KEY,
    queue       text        NOT NULL,
    kind        text        NOT NULL,
    job_id      text        NOT NULL,
    dimension   text        NOT NULL,
    name        text        NOT NULL,
    idx         integer,
    payload     jsonb       NOT NULL DEFAULT '{}',
    attempts    integer     NOT NULL DEFAULT 0,
    visible_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    lease_owner text,
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp()
) WITH (fillfactor = 70, autovacuum_vacuum_scale_factor = 0.01);

CREATE INDEX tasks_claim ON tasks (queue, visible_at);
-- At most one unclaimed run per (job, thread): one run sees every answer.
CREATE UNIQUE INDEX tasks_one_unclaimed_run ON tasks (job_id, dimension)
    WHERE kind = 'run' AND lease_owner IS NULL;

CREATE TABLE dead_letters (
    id         bigint      PRIMARY KEY,
    task       jsonb       NOT NULL,
    error      jsonb       NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);

CREATE TABLE waiters (
    signal_id  text        NOT NULL,
    job_id     text        NOT NULL,
    dimension  text        NOT NULL,
    idx        integer     NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (job_id, dimension, idx)
);
CREATE INDEX waiters_signal ON waiters (signal_id, created_at);

CREATE TABLE signals (
    id         bigserial   PRIMARY KEY,
    signal_id  text        NOT NULL,
    data       jsonb,
    expires_at timestamptz NOT NULL,
    created_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
CREATE INDEX signals_signal ON signals (signal_id, id);

-- Entity operations, applied in the database (never read-modify-write in a
-- client). They mirror hotmesh_core.entity_ops.apply_op exactly; errors use
-- SQLSTATE HM001 and become EntityPathError.

-- The value at a path, following objects only (SQL NULL when absent).
CREATE FUNCTION hm_get_path(doc jsonb, path text[]) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    node jsonb := doc;
    part text;
BEGIN
    FOREACH part IN ARRAY path LOOP
        IF node IS NULL OR jsonb_typeof(node) <> 'object' THEN
            RETURN NULL;
        END IF;
        node := node -> part;
    END LOOP;
    RETURN node;
END
$$;

-- Set a path, creating missing (or null) intermediate objects.
CREATE FUNCTION hm_set_path(doc jsonb, path text[], value jsonb, full_path text) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    child jsonb;
BEGIN
    IF doc IS NULL OR jsonb_typeof(doc) = 'null' THEN
        doc := '{}'::jsonb;
    END IF;
    IF cardinality(path) = 1 THEN
        RETURN doc || jsonb_build_object(path[1], value);
    END IF;
    child := doc -> path[1];
    IF child IS NOT NULL AND jsonb_typeof(child) NOT IN ('object', 'null') THEN
        RAISE EXCEPTION 'entity path %: % holds a non-object', quote_literal(full_path),
            quote_literal(path[1]) USING ERRCODE = 'HM001';
    END IF;
    RETURN doc || jsonb_build_object(path[1], hm_set_path(child, path[2:], value, full_path));
END
$$;

CREATE FUNCTION hm_deep_merge(base jsonb, patch jsonb) RETURNS jsonb
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    merged jsonb;
    k text;
    v jsonb;
BEGIN
    IF jsonb_typeof(base) <> 'object' OR jsonb_typeof(patch) <> 'object' THEN
        RETURN patch;
    END IF;
    merged := base;
    FOR k, v IN SELECT key, value FROM jsonb_each(patch) LOOP
        IF merged ? k THEN
            merged := merged || jsonb_build_object(k, hm_deep_merge(merged -> k, v));
        ELSE
            merged := merged || jsonb_build_object(k, v);
        END IF;
    END LOOP;
    RETURN merged;
END
$$;

-- Apply one operation to a job's entity under a row lock; bump the version and
-- log the change when the document changed. Returns the operation's result.
CREATE FUNCTION hm_apply_entity(p_job text, p_op text, p_path text, p_value jsonb,
                                p_dimension text, p_index integer,
                                OUT result jsonb, OUT new_version bigint)
LANGUAGE plpgsql AS $$
DECLARE
    doc      jsonb;
    new_doc  jsonb;
    cur      jsonb;
    parts    text[] := string_to_array(p_path, '.');
    changed  boolean := true;
BEGIN
    SELECT j.context, j.version INTO doc, new_version FROM jobs j WHERE j.id = p_job FOR UPDATE;
    IF NOT FOUND THEN
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
         WHERE id = p_job;
        INSERT INTO entity_changes (job_id, version, op, path, value, dimension, idx)
        VALUES (p_job, new_version, p_op, p_path, p_value, p_dimension, p_index);
    END IF;
END
$$;
