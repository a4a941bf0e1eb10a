-- Batches passed as one JSON document instead of one array per column: a worker or client
-- builds it with the C JSON encoder, where dumping a dozen typed arrays element by element cost
-- it more CPU than the whole call otherwise did (about 70 µs of Python per batch of four).

-- Several runs started in one call and one commit: a client whose threads start runs while
-- another start is committing starts them together (group commit, see client._StartBatch). Each
-- commit of a start is a WAL flush under PostgreSQL's commit-time NOTIFY lock and wakes every
-- listening backend; one commit for k starts pays that once, and its one 'durable_tasks'
-- notification (identical notifications of a transaction are sent once) lets a worker lease the
-- k new tasks in one dispatch round.
--
-- p_starts is a JSON array of [id, workflow, hash, queue, priority, first step, idempotency key,
-- scheduled_at, deadline, input]. Element i gets exactly what durable_start_v1 does for it (a
-- client's start has no parent), and is reported the same way, in order: the run id, and whether
-- it was created (false: an existing run already had the idempotency key, possibly an earlier
-- element of this very batch). The caller sorts elements by idempotency key, so two batches
-- insert keys in the same order and cannot deadlock each other.
CREATE FUNCTION durable_start_batch_v1(p_starts jsonb)
RETURNS TABLE (run_id uuid, created boolean) LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    r record;
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(p_starts) LOOP
        SELECT s.run_id, s.created INTO r
        FROM durable_start_v1((e ->> 0)::uuid, e ->> 1, e ->> 2, e ->> 3, (e ->> 4)::integer, e -> 9, e ->> 5,
                              e ->> 6, NULL, NULL, NULL, (e ->> 7)::timestamptz, (e ->> 8)::timestamptz) s;
        run_id := r.run_id;
        created := r.created;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- As durable_checkpoint_batch_v2 (migration 0006), with the batch as a JSON array of [task id,
-- lease token, run id, step, attempt, started_at, next node, next queue, new token, context]
-- (JSON null for none): the same records, the same answers in the same order.
CREATE FUNCTION durable_checkpoint_batch_v3(p_batch jsonb, p_worker text, p_ttl double precision)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    v_ok boolean[] := '{}';
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(p_batch) LOOP
        IF e ->> 6 IS NULL THEN
            v_ok := v_ok || durable_succeed_v2((e ->> 0)::bigint, (e ->> 1)::uuid, (e ->> 2)::uuid, e ->> 3,
                                               (e ->> 4)::integer, nullif(e -> 9, 'null'), p_worker,
                                               (e ->> 5)::timestamptz);
        ELSE
            v_ok := v_ok || durable_advance_v1((e ->> 0)::bigint, (e ->> 1)::uuid, (e ->> 2)::uuid, e ->> 3,
                                               (e ->> 4)::integer, nullif(e -> 9, 'null'), p_worker,
                                               (e ->> 5)::timestamptz, e ->> 6, e ->> 7, (e ->> 8)::uuid, p_ttl);
        END IF;
    END LOOP;
    RETURN v_ok;
END;
$$;
