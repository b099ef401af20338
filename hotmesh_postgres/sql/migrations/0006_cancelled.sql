-- HotMesh schema, version 6: the cancelled status (handle.cancel()).
--
-- A job that lets the CancelledError of a cancel request end it finishes as
-- 'cancelled': a finished status, so it expires like the others.
CREATE OR REPLACE FUNCTION hm_delete_expired(p_bucket text, p_now timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    removed bigint;
BEGIN
    WITH gone AS (
        DELETE FROM jobs
         WHERE bucket = p_bucket AND expire IS NOT NULL AND finished_at IS NOT NULL
           AND status IN ('completed', 'failed', 'cancelled', 'interrupted')
           AND finished_at + make_interval(secs => expire) <= p_now
        RETURNING id),
    s AS (DELETE FROM steps WHERE bucket = p_bucket AND job_id IN (SELECT id FROM gone)),
    h AS (DELETE FROM threads WHERE bucket = p_bucket AND job_id IN (SELECT id FROM gone)),
    c AS (DELETE FROM entity_changes WHERE bucket = p_bucket AND job_id IN (SELECT id FROM gone))
    SELECT count(*) INTO removed FROM gone;
    RETURN removed;
END
$$;
