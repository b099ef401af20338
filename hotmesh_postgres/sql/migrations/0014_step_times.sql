-- HotMesh schema, version 14: a step inserted done starts and finishes at once.
--
-- hm_insert_step as in version 8, with one clock reading for both times: the
-- column default (started_at) was evaluated after the SELECT's finished_at,
-- so a step recorded done (a value, an entity step, an activity a worker ran
-- before committing its dispatch) could finish a microsecond before it
-- started, and an export's timeline said so.
CREATE OR REPLACE FUNCTION hm_insert_step(p_job text, p_bucket text, s jsonb) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    inserted integer;
    v_now    timestamptz := clock_timestamp();
BEGIN
    -- Steps live in their job's bucket; an interrupted job takes no new step.
    INSERT INTO steps (job_id, dimension, idx, kind, name, args, status, result, error,
                       attempts, wake_queue, wake_name, wake_worker, started_at, finished_at,
                       bucket)
    SELECT p_job, s->>'dimension', (s->>'index')::integer, s->>'kind', s->>'name', s->'args',
           s->>'status', s->'result', nullif(s->'error', 'null'::jsonb),
           (s->>'attempts')::integer, s->>'wake_queue', s->>'wake_name', s->>'wake_worker',
           v_now, CASE WHEN s->>'status' = 'pending' THEN NULL ELSE v_now END, j.bucket
      FROM jobs j WHERE j.id = p_job AND j.bucket = p_bucket AND j.status <> 'interrupted'
    ON CONFLICT DO NOTHING;
    GET DIAGNOSTICS inserted = ROW_COUNT;
    RETURN inserted > 0;
END
$$;
