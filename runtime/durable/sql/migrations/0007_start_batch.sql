-- Several runs started in one call and one commit: a client whose threads start runs while
-- another start is committing starts them together (group commit, see client._StartBatch). Each
-- commit of a start is a WAL flush under PostgreSQL's commit-time NOTIFY lock and wakes every
-- listening backend; one commit for k starts pays that once, and its one 'durable_tasks'
-- notification (identical notifications of a transaction are sent once) lets a worker lease the
-- k new tasks in one dispatch round.
--
-- Element i is exactly what durable_start_v1 does for it (a client's start has no parent), and
-- reports the same way, in order: the run id, and whether it was created (false: an existing run
-- already had the idempotency key, possibly an earlier element of this very batch). The caller
-- sorts elements by idempotency key, so two batches insert keys in the same order and cannot
-- deadlock each other.
CREATE FUNCTION durable_start_batch_v1(p_ids uuid[], p_workflows text[], p_hashes text[], p_queues text[],
                                       p_priorities integer[], p_inputs text[], p_first_steps text[], p_keys text[],
                                       p_scheduled_ats timestamptz[], p_deadlines timestamptz[])
RETURNS TABLE (run_id uuid, created boolean) LANGUAGE plpgsql AS $$
DECLARE
    r record;
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_ids, 1), 0) LOOP
        SELECT s.run_id, s.created INTO r
        FROM durable_start_v1(p_ids[i], p_workflows[i], p_hashes[i], p_queues[i], p_priorities[i],
                              p_inputs[i]::jsonb, p_first_steps[i], p_keys[i], NULL, NULL, NULL,
                              p_scheduled_ats[i], p_deadlines[i]) s;
        run_id := r.run_id;
        created := r.created;
        RETURN NEXT;
    END LOOP;
END;
$$;
