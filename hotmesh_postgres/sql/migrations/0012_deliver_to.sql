-- HotMesh schema, version 12: a signal handed to the worker of its process.
--
-- A signal delivered from a process whose worker caches the run it wakes
-- (hotmesh_core.in_process, advance.Handoff): as hm_deliver, but when the
-- answered step's wake_worker is p_worker its run task is leased to p_owner
-- (no NOTIFY: that worker resumes the run at once). Returns NULL when the
-- signal was buffered, else what was answered and, when handed, the run's id.
CREATE OR REPLACE FUNCTION hm_deliver_to(p_signal text, p_data jsonb, p_expire double precision,
                                         p_queue_channel text, p_worker text, p_owner text,
                                         p_lease double precision)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    w_job   text;
    w_dim   text;
    w_idx   integer;
    s       record;
    run_id  bigint;
    leased  boolean;
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
        -- As hm_answer_wait, the run leased when it is p_worker's.
        UPDATE steps SET status = 'done', result = p_data, error = NULL,
                         finished_at = clock_timestamp()
         WHERE job_id = w_job AND dimension = w_dim AND idx = w_idx AND status = 'pending'
        RETURNING job_id, dimension, idx, wake_queue, wake_name, wake_worker INTO s;
        IF FOUND THEN
            -- Leased only to the worker that caches the run (p_worker NULL: never).
            leased := coalesce(s.wake_worker = p_worker, false);
            run_id := hm_enqueue(jsonb_build_object('queue', s.wake_queue, 'kind', 'run',
                                                    'job_id', s.job_id, 'dimension', s.dimension,
                                                    'name', s.wake_name, 'sticky', s.wake_worker),
                                 0, CASE WHEN leased THEN p_owner END,
                                 CASE WHEN leased THEN p_lease ELSE 0 END, p_queue_channel);
            IF NOT leased THEN
                RETURN jsonb_build_object('job_id', s.job_id);
            END IF;
            RETURN jsonb_build_object('job_id', s.job_id, 'dimension', s.dimension,
                                      'idx', s.idx, 'queue', s.wake_queue,
                                      'name', s.wake_name, 'run_id', run_id);
        END IF;
    END LOOP;
    expires := clock_timestamp() + make_interval(secs => p_expire);
    INSERT INTO signals (signal_id, data, expires_at, bucket)
    VALUES (p_signal, p_data, expires, hm_bucket('signals', expires, 'later'));
    RETURN NULL;
END
$$;

-- Signal.deliver without a hand-over is the same delivery: one definition of it.
CREATE OR REPLACE FUNCTION hm_deliver(p_signal text, p_data jsonb, p_expire double precision,
                                      p_queue_channel text)
RETURNS boolean LANGUAGE sql AS $$
    SELECT hm_deliver_to(p_signal, p_data, p_expire, p_queue_channel, NULL, NULL, 0) IS NOT NULL
$$;
