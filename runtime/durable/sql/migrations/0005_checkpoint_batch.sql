-- Several runs' step checkpoints in one call and one commit: a worker whose slots finish steps
-- while another checkpoint is committing records them together (group commit, see
-- checkpoint.GroupCommit). Every commit costs a WAL flush, takes PostgreSQL's commit-time NOTIFY
-- lock through that flush and wakes every listening backend, so one commit for k checkpoints
-- saves k-1 of each.
--
-- Each element is exactly what durable_advance_v1 (p_next not NULL) or durable_succeed_v1
-- (p_next NULL) records, and reports the same way: false, changing nothing for that run, when its
-- lease was lost, so one lost lease never costs the others their checkpoint. Runs are taken in
-- the order given; the caller sorts them by run id, so two batches lock executions rows in the
-- same order and cannot deadlock each other.
CREATE FUNCTION durable_checkpoint_batch_v1(p_task_ids bigint[], p_tokens uuid[], p_run_ids uuid[], p_steps text[],
                                            p_attempts integer[], p_contexts text[], p_worker text,
                                            p_started_ats timestamptz[], p_nexts text[], p_next_queues text[],
                                            p_new_tokens uuid[], p_ttl double precision)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    v_ok boolean[] := '{}';
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_task_ids, 1), 0) LOOP
        IF p_nexts[i] IS NULL THEN
            v_ok := v_ok || durable_succeed_v1(p_task_ids[i], p_tokens[i], p_run_ids[i], p_steps[i], p_attempts[i],
                                               p_contexts[i]::jsonb, p_worker, p_started_ats[i]);
        ELSE
            v_ok := v_ok || durable_advance_v1(p_task_ids[i], p_tokens[i], p_run_ids[i], p_steps[i], p_attempts[i],
                                               p_contexts[i]::jsonb, p_worker, p_started_ats[i], p_nexts[i],
                                               p_next_queues[i], p_new_tokens[i], p_ttl);
        END IF;
    END LOOP;
    RETURN v_ok;
END;
$$;
