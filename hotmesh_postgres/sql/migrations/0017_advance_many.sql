-- HotMesh schema, version 17: group commit of one worker's advances (and
-- hm_bucket planned once per session).
--
-- hm_advance_many applies several plain advances (each what hm_advance
-- applies) in one statement and one transaction, so that a worker running
-- many workflows at once pays one round trip and one commit for the steps
-- that became ready together, not one each (Store.advance_many). Each advance
-- runs in a subtransaction of its own (the BEGIN ... EXCEPTION block): one
-- that fails (superseded, or any error) leaves nothing behind and yields
-- NULL in its place, the others commit; the caller applies a NULL's advance
-- again on its own, where it fails or succeeds exactly as it would have
-- alone. The advances are applied in job order (then in the order given), so
-- that two batches lock the jobs' rows in one order and never deadlock each
-- other; two advances of one job keep their order. While the group runs, a
-- lock is waited for 50 ms at most: a group holds the rows of the jobs it
-- advanced so far, so an advance that would wait on another transaction
-- gives way instead (NULL: applied again alone, holding nothing else) and a
-- group is never one side of a deadlock.
CREATE OR REPLACE FUNCTION hm_advance_many(p_plans jsonb, p_buckets text[], p_terminal text[],
                                           p_queue_channel text, p_job_channel text)
RETURNS jsonb LANGUAGE plpgsql AS $$
DECLARE
    v_done jsonb := '[]';
    v_out  jsonb[];
    v_n    integer := jsonb_array_length(p_plans);
    v_i    integer;
    v_wait text := current_setting('lock_timeout');
BEGIN
    PERFORM set_config('lock_timeout', '50ms', true);
    v_out := array_fill(NULL::jsonb, ARRAY[v_n]);
    FOR v_i IN
        SELECT o FROM generate_series(1, v_n) AS o ORDER BY p_plans->(o - 1)->>'job_id', o
    LOOP
        BEGIN
            v_out[v_i] := hm_advance(p_plans->(v_i - 1), p_buckets[v_i], p_terminal,
                                     p_queue_channel, p_job_channel);
        EXCEPTION WHEN OTHERS THEN
            v_out[v_i] := NULL;
        END;
    END LOOP;
    PERFORM set_config('lock_timeout', v_wait, true);
    FOR v_i IN 1..v_n LOOP
        v_done := v_done || jsonb_build_array(coalesce(v_out[v_i], 'null'::jsonb));
    END LOOP;
    RETURN v_done;
END
$$;

-- hm_bucket as in version 2, in PL/pgSQL: a start passes it a volatile
-- argument (clock_timestamp() + the job's expiry), which keeps the SQL
-- function from being inlined, and a SQL function's statement is planned
-- again at every call (33 us of each start, planned 990 times in 1,000); a
-- PL/pgSQL function keeps its plans for the session.
CREATE OR REPLACE FUNCTION hm_bucket(p_table text, p_at timestamptz, p_fallback text)
RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_day text;
BEGIN
    IF p_at IS NULL THEN
        RETURN p_fallback;
    END IF;
    v_day := hm_day_bucket(p_at);
    IF to_regclass(quote_ident(p_table || '_' || v_day)) IS NULL THEN
        RETURN p_fallback;
    END IF;
    RETURN v_day;
END
$$;
