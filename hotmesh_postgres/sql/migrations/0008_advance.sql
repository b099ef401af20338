-- One run's commit in one statement (hotmesh_core/advance.py): the answers
-- its worker ran inline, the delivered activation's compare-and-set, recorded
-- values, new activity and timer steps with their tasks, the job's end, a run
-- of the thread and acks. The client pays one round trip for what was six to
-- ten (a transition is bound by client CPU per round trip, not by the server).
--
-- Each statement here takes a fresh snapshot (a VOLATILE function in READ
-- COMMITTED), so every condition is checked as the separate statements of the
-- reference semantics check it; an answer found not pending, or a moved
-- activation, raises HM010 and the whole statement is undone (Superseded).

CREATE OR REPLACE FUNCTION hm_insert_step(p_job text, p_bucket text, s jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    inserted integer;
BEGIN
    -- Steps live in their job's bucket; an interrupted job takes no new step.
    INSERT INTO steps (job_id, dimension, idx, kind, name, args, status, result, error,
                       attempts, wake_queue, wake_name, wake_worker, finished_at, bucket)
    SELECT p_job, s->>'dimension', (s->>'index')::integer, s->>'kind', s->>'name', s->'args',
           s->>'status', s->'result', nullif(s->'error', 'null'::jsonb),
           (s->>'attempts')::integer, s->>'wake_queue', s->>'wake_name', s->>'wake_worker',
           CASE WHEN s->>'status' = 'pending' THEN NULL ELSE clock_timestamp() END, j.bucket
      FROM jobs j WHERE j.id = p_job AND j.bucket = p_bucket AND j.status <> 'interrupted'
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted > 0;
END
$$;

CREATE OR REPLACE FUNCTION hm_enqueue(t jsonb, p_delay double precision, p_owner text,
                                      p_lease double precision, p_queue_channel text)
RETURNS bigint LANGUAGE plpgsql AS $$
DECLARE
    new_id  bigint;
    existed boolean;
BEGIN
    INSERT INTO tasks (queue, kind, job_id, dimension, name, idx, payload, visible_at,
                       lease_owner, attempts, sticky)
    VALUES (t->>'queue', t->>'kind', t->>'job_id', t->>'dimension', t->>'name',
            (t->>'index')::integer, coalesce(t->'payload', '{}'),
            clock_timestamp() + make_interval(secs => CASE WHEN p_owner IS NULL
                                                           THEN p_delay ELSE p_lease END),
            p_owner, CASE WHEN p_owner IS NULL THEN 0 ELSE 1 END, t->>'sticky')
    -- As Stream.enqueue: the no-op update locks a queued run until this commits.
    ON CONFLICT (job_id, dimension) WHERE kind = 'run' AND lease_owner IS NULL
    DO UPDATE SET visible_at = tasks.visible_at
    RETURNING id, xmax <> 0 INTO new_id, existed;
    IF existed THEN
        RETURN NULL;  -- a queued run of this thread will see everything
    END IF;
    IF p_owner IS NULL THEN
        PERFORM pg_notify(p_queue_channel, t->>'queue');
    END IF;
    RETURN new_id;
END
$$;

-- A signal's data answers a waiting step (if pending) and wakes its thread's
-- run, sticky to the worker that caches it: Signal.deliver and a wait that
-- finds its signal buffered.
CREATE OR REPLACE FUNCTION hm_answer_wait(p_job text, p_dim text, p_idx integer, p_data jsonb,
                                          p_queue_channel text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    s record;
BEGIN
    UPDATE steps SET status = 'done', result = p_data, error = NULL,
                     finished_at = clock_timestamp()
     WHERE job_id = p_job AND dimension = p_dim AND idx = p_idx AND status = 'pending'
    RETURNING job_id, dimension, wake_queue, wake_name, wake_worker INTO s;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    PERFORM hm_enqueue(jsonb_build_object('queue', s.wake_queue, 'kind', 'run',
                                          'job_id', s.job_id, 'dimension', s.dimension,
                                          'name', s.wake_name, 'sticky', s.wake_worker),
                       0, NULL, 0, p_queue_channel);
    RETURN true;
END
$$;

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

    FOR e IN SELECT value FROM jsonb_array_elements(p->'answers') LOOP
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
        SELECT array_agg(value::integer) INTO v_indexes
          FROM jsonb_array_elements_text(p->'delivered'->1);
        IF v_dim = '' THEN
            UPDATE jobs SET activation = v_act
             WHERE id = v_job AND bucket = v_bucket AND activation = v_act - 1;
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

    FOR e IN SELECT value FROM jsonb_array_elements(p->'values') LOOP
        PERFORM hm_insert_step(v_job, v_bucket, e);
    END LOOP;

    IF (p->>'running')::boolean THEN
        UPDATE jobs SET status = 'running', result = 'null', error = NULL,
                        updated_at = clock_timestamp(), finished_at = NULL
         WHERE id = v_job AND bucket = v_bucket AND status <> ALL(p_terminal);
    END IF;

    FOR e IN SELECT value FROM jsonb_array_elements(p->'dispatches') LOOP
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
         WHERE id = v_job AND bucket = v_bucket AND status <> ALL(p_terminal);
        IF FOUND THEN
            v_ended := true;
            PERFORM pg_notify(p_job_channel, v_job);
        END IF;
    END IF;

    IF jsonb_typeof(p->'wake') = 'object' THEN
        PERFORM hm_enqueue(p->'wake', 0, NULL, 0, p_queue_channel);
    END IF;

    DELETE FROM tasks WHERE id = ANY(ARRAY(SELECT value::bigint
                                             FROM jsonb_array_elements_text(p->'acks')));

    RETURN jsonb_build_object('task_ids', v_ids, 'finished', v_ended);
END
$$;

-- Signal.deliver in one statement. The lock is its own statement, so the
-- waiter query after it sees every waiter committed before the lock was
-- granted (a statement's snapshot predates any lock it waits for).
CREATE OR REPLACE FUNCTION hm_deliver(p_signal text, p_data jsonb, p_expire double precision,
                                      p_queue_channel text)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    w_job   text;
    w_dim   text;
    w_idx   integer;
    expires timestamptz;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_signal, 11));
    LOOP
        DELETE FROM waiters w USING (
            SELECT job_id, dimension, idx FROM waiters WHERE signal_id = p_signal
             ORDER BY created_at LIMIT 1 FOR UPDATE) first
         WHERE (w.job_id, w.dimension, w.idx) = (first.job_id, first.dimension, first.idx)
        RETURNING w.job_id, w.dimension, w.idx INTO w_job, w_dim, w_idx;
        EXIT WHEN NOT FOUND;
        IF hm_answer_wait(w_job, w_dim, w_idx, p_data, p_queue_channel) THEN
            RETURN true;
        END IF;
    END LOOP;
    expires := clock_timestamp() + make_interval(secs => p_expire);
    INSERT INTO signals (signal_id, data, expires_at, bucket)
    VALUES (p_signal, p_data, expires, hm_bucket('signals', expires, 'later'));
    RETURN false;
END
$$;

-- Whether a job id is free, checked under a lock on the id (held until the
-- starting transaction ends). The check is a statement of its own, so its
-- snapshot follows the lock: two starts of one id in different buckets (one
-- with expire, one without; or either side of midnight) cannot both see it
-- free. Called from the start's INSERT, so a start stays one statement.
CREATE OR REPLACE FUNCTION hm_id_free(p_id text) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended(p_id, 13));
    RETURN NOT EXISTS (SELECT 1 FROM jobs WHERE id = p_id);
END
$$;
