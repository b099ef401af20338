-- HotMesh schema, version 16: the queue's statements stay on their indexes.
--
-- A queue table is often empty when autovacuum looks at it, and VACUUM then
-- truncates it to no pages; the planner costs a scan of an empty table at
-- nothing, so every statement on tasks planned then (a claim, an answer's
-- delete) read the whole table sequentially once it had filled again. Not
-- truncating keeps the table's size at its high-water mark, so the planner
-- sees what a scan costs and keeps to the indexes (truncation also takes an
-- ACCESS EXCLUSIVE lock that claims would queue behind).
ALTER TABLE tasks SET (vacuum_truncate = false);
ALTER TABLE waiters SET (vacuum_truncate = false);

-- hm_advance as in version 15, its lists walked by position: acked tasks are
-- deleted one key at a time (`id = ANY(ARRAY(SELECT ...))` is planned for a
-- hundred keys, and its generic plan read every row of tasks, dead ones
-- included: 12% of the server's CPU in W1), and no list is a query of its
-- own (`FOR e IN SELECT value FROM jsonb_array_elements(...)` opened a cursor
-- per list, and an advance's five lists took 18 us so, 2 us walked by position).
CREATE OR REPLACE FUNCTION hm_advance(p jsonb, p_bucket text, p_terminal text[],
                                      p_queue_channel text, p_job_channel text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_job     text := p->>'job_id';
    v_dim     text := p->>'dimension';
    v_bucket  text;
    e         jsonb;
    v_act     integer;
    v_indexes integer[];
    v_count   integer;
    v_ids     jsonb := '[]';
    v_id      bigint;
    v_ended   boolean := false;
    v_follow  boolean;
    v_data    jsonb;
    v_awaited boolean;
    v_list    jsonb;
BEGIN
    -- The job's row first, locked: an interrupt (the job, then its tasks)
    -- and this advance (the job, then answers' tasks and steps) then queue
    -- behind each other instead of deadlocking.
    IF p_bucket IS NOT NULL THEN
        SELECT bucket INTO v_bucket FROM jobs WHERE id = v_job AND bucket = p_bucket
           FOR NO KEY UPDATE;
    END IF;
    IF v_bucket IS NULL THEN  -- no hint, or a stale one (expired, started again)
        SELECT bucket INTO v_bucket FROM jobs WHERE id = v_job FOR NO KEY UPDATE;
    END IF;

    -- Steps recorded done as they are: an inline activity the worker ran
    -- before its dispatch was ever committed (a run's first step, deferred).
    -- Inserted before the activation's compare-and-set, which marks them; a
    -- step already there (a racing run dispatched it) supersedes this advance.
    v_list := coalesce(p->'recorded', '[]');
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        e := v_list->i;
        IF NOT hm_insert_step(v_job, v_bucket, e) THEN
            RAISE EXCEPTION 'step % of % was recorded elsewhere', e->>'index', quote_literal(v_job)
                USING ERRCODE = 'HM010';
        END IF;
    END LOOP;

    v_list := coalesce(p->'answers', '[]');
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        e := v_list->i;
        -- The task, then its step: the order of every transition that answers
        -- a step (fire_timer, complete_activity), so racing ones wait for each
        -- other, never deadlock. A task that is gone was called off (its job
        -- interrupted, its generation continued as new): it answers nothing.
        DELETE FROM tasks WHERE id = (e->>'task_id')::bigint;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'the task of step % of % is gone', e->>'index', quote_literal(v_job)
                USING ERRCODE = 'HM010';
        END IF;
        UPDATE steps SET status = CASE WHEN nullif(e->'error', 'null'::jsonb) IS NULL
                                       THEN 'done' ELSE 'failed' END,
                         result = e->'result', error = nullif(e->'error', 'null'::jsonb),
                         attempts = coalesce((e->>'attempts')::integer, attempts),
                         finished_at = clock_timestamp()
         WHERE job_id = v_job AND bucket = v_bucket AND dimension = v_dim
           AND idx = (e->>'index')::integer AND status = 'pending';
        IF NOT FOUND THEN
            RAISE EXCEPTION 'step % of % was answered elsewhere', e->>'index', quote_literal(v_job)
                USING ERRCODE = 'HM010';
        END IF;
    END LOOP;

    IF jsonb_typeof(p->'delivered') = 'array' THEN
        v_act := (p->'delivered'->>0)::integer;
        v_list := coalesce(p->'delivered'->1, '[]');
        FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
            v_indexes := v_indexes || (v_list->>i)::integer;  -- NULL when none
        END LOOP;
        IF v_dim = '' THEN
            -- A cancel request this run has not seen (it came after the run
            -- read) is delivered by the next activation: one without it gives way.
            UPDATE jobs SET activation = v_act
             WHERE id = v_job AND bucket = v_bucket AND activation = v_act - 1
               AND (-1 = ANY(coalesce(v_indexes, '{}')) OR NOT EXISTS (
                    SELECT 1 FROM steps WHERE job_id = v_job AND bucket = v_bucket
                       AND dimension = '' AND idx = -1 AND activation IS NULL));
        ELSE
            UPDATE threads SET activation = v_act
             WHERE job_id = v_job AND bucket = v_bucket AND dimension = v_dim
               AND activation = v_act - 1;
        END IF;
        IF NOT FOUND THEN
            RAISE EXCEPTION 'another run of % delivered activation % first', quote_literal(v_job), v_act
                USING ERRCODE = 'HM010';
        END IF;
        UPDATE steps SET activation = v_act
         WHERE job_id = v_job AND bucket = v_bucket AND dimension = v_dim
           AND idx = ANY(coalesce(v_indexes, '{}')) AND status <> 'pending' AND activation IS NULL;
        GET DIAGNOSTICS v_count = ROW_COUNT;
        IF v_count <> coalesce(cardinality(v_indexes), 0) THEN
            RAISE EXCEPTION 'another run of % delivered answers of activation % first',
                quote_literal(v_job), v_act USING ERRCODE = 'HM010';
        END IF;
    END IF;

    v_list := coalesce(p->'values', '[]');
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        e := v_list->i;
        PERFORM hm_insert_step(v_job, v_bucket, e);
    END LOOP;

    IF (p->>'running')::boolean THEN
        UPDATE jobs SET status = 'running', result = 'null', error = NULL,
                        updated_at = clock_timestamp(), finished_at = NULL
         WHERE id = v_job AND bucket = v_bucket AND status <> ALL(p_terminal);
    END IF;

    v_list := coalesce(p->'dispatches', '[]');
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        e := v_list->i;
        v_id := NULL;
        v_follow := hm_insert_step(v_job, v_bucket, e->'step');
        IF v_follow AND e->>'signal_id' IS NOT NULL THEN
            -- A wait: the lock deliveries of the id take, then (a new snapshot)
            -- a buffered signal answers it at once, or a waiter is added.
            PERFORM pg_advisory_xact_lock(hashtextextended(e->>'signal_id', 11));
            DELETE FROM signals WHERE id = (
                SELECT id FROM signals WHERE signal_id = e->>'signal_id'
                   AND expires_at > clock_timestamp() ORDER BY id LIMIT 1 FOR UPDATE)
            RETURNING data INTO v_data;
            IF FOUND THEN
                PERFORM hm_answer_wait(v_job, v_dim, (e->'step'->>'index')::integer, v_data,
                                       p_queue_channel);
                v_follow := false;
            ELSE
                INSERT INTO waiters (signal_id, job_id, dimension, idx)
                VALUES (e->>'signal_id', v_job, v_dim, (e->'step'->>'index')::integer)
                ON CONFLICT DO NOTHING;
            END IF;
        END IF;
        IF v_follow AND jsonb_typeof(e->'task') = 'object' THEN
            v_id := hm_enqueue(e->'task', (e->>'delay')::float8, e->>'owner',
                               (e->>'lease')::float8, p_queue_channel);
        END IF;
        v_ids := v_ids || coalesce(to_jsonb(v_id::text), 'null'::jsonb);
    END LOOP;

    IF jsonb_typeof(p->'finish') = 'object' THEN
        UPDATE jobs SET status = p->'finish'->>'status', result = p->'finish'->'result',
                        error = nullif(p->'finish'->'error', 'null'::jsonb),
                        updated_at = clock_timestamp(),
                        finished_at = CASE WHEN p->'finish'->>'status' = ANY(p_terminal)
                                           THEN clock_timestamp() END
         WHERE id = v_job AND bucket = v_bucket AND status <> ALL(p_terminal)
        RETURNING awaited INTO v_awaited;
        IF FOUND THEN
            v_ended := true;
            -- Announced unless the one process that waits hears it otherwise
            -- (a quiet finish) and nobody elsewhere asked (jobs.awaited).
            IF v_awaited OR NOT coalesce((p->'finish'->>'quiet')::boolean, false) THEN
                PERFORM pg_notify(p_job_channel, v_job);
            END IF;
        END IF;
    END IF;

    IF jsonb_typeof(p->'wake') = 'object' THEN
        PERFORM hm_enqueue(p->'wake', 0, NULL, 0, p_queue_channel);
    END IF;

    -- One task at a time, each by its key (see the head of this file).
    v_list := coalesce(p->'acks', '[]');
    FOR i IN 0 .. jsonb_array_length(v_list) - 1 LOOP
        DELETE FROM tasks WHERE id = (v_list->>i)::bigint;
    END LOOP;

    RETURN jsonb_build_object('task_ids', v_ids, 'finished', v_ended);
END
$$;
