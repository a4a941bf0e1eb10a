-- A finished run travels in its durable_finished notification, so Client.wait, woken by it, has
-- nothing left to ask the database: one query and one transaction fewer per awaited run.
--
-- durable_run_v1 is the one definition of what a client reads of a run: Client.get selects it,
-- and the notification carries it. A JSON array, in the order Run.from_row takes: the run's
-- columns, its step index and the workflow's step count (for progress), then its steps and its
-- waits as arrays of rows. NULL for an unknown run. PL/pgSQL, not SQL: PostgreSQL 16 plans a
-- SQL function's body again on every call, PL/pgSQL once per connection.
CREATE FUNCTION durable_run_v1(p_run_id uuid) RETURNS json LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN (SELECT json_build_array(
           e.id, e.workflow, e.definition_hash, e.status, e.queue, e.priority, e.input, e.context, e.current_step,
           e.attempt, e.result, e.error, e.idempotency_key, e.parent_id, e.scheduled_at, e.deadline, e.created_at,
           e.started_at, e.updated_at, e.finished_at,
           (w.graph -> 'index' ->> e.current_step)::int, (w.graph ->> 'total')::int,
           (SELECT coalesce(json_agg(json_build_array(s.name, s.kind, s.attempt, s.status, s.output, s.error,
                                                      s.worker, s.started_at, s.finished_at) ORDER BY s.id), '[]')
            FROM steps s WHERE s.run_id = e.id),
           (SELECT coalesce(json_agg(json_build_array(x.step, x.idx, x.kind, x.names, x.prompt, x.until, x.status,
                                                      x.value, x.created_at, x.resolved_at)
                                     ORDER BY x.created_at, x.idx), '[]')
            FROM waits x WHERE x.run_id = e.id))
    FROM executions e LEFT JOIN workflows w ON w.name = e.workflow
    WHERE e.id = p_run_id);
END;
$$;

-- The durable_finished payload: '<run id> <durable_run_v1>', or the bare run id (what release 1
-- sent, and what a reader then looks up itself) when the run would not fit in a notification,
-- whose payload PostgreSQL limits to 8000 bytes.
CREATE FUNCTION durable_finished_payload_v1(p_run_id uuid) RETURNS text LANGUAGE plpgsql STABLE AS $$
DECLARE
    v_run text := durable_run_v1(p_run_id)::text;
BEGIN
    IF v_run IS NOT NULL AND octet_length(v_run) <= 7900 THEN
        RETURN p_run_id::text || ' ' || v_run;
    END IF;
    RETURN p_run_id::text;
END;
$$;

-- As durable_succeed_v1, with the finished run in its durable_finished notification.
CREATE FUNCTION durable_succeed_v2(p_task_id bigint, p_token uuid, p_run_id uuid, p_step text, p_attempt integer,
                                   p_context jsonb, p_worker text, p_started_at timestamptz)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_result jsonb;
    v_parent uuid;
    w record;
BEGIN
    PERFORM 1 FROM executions WHERE id = p_run_id AND status IN ('running', 'waiting', 'pending') FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    DELETE FROM tasks WHERE id = p_task_id AND lease_token = p_token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_step IS NOT NULL THEN
        INSERT INTO steps (run_id, name, kind, attempt, status, final, output, worker, started_at)
        VALUES (p_run_id, p_step, 'step', p_attempt, 'succeeded', true, p_context, p_worker, p_started_at);
    END IF;
    UPDATE executions SET status = 'succeeded', context = coalesce(p_context, context),
                          result = coalesce(p_context, context), finished_at = now(), updated_at = now()
    WHERE id = p_run_id
    RETURNING result, parent_id INTO v_result, v_parent;
    -- Sequential pipelines leave nothing else behind; these only touch rows of runs that had
    -- timers, waits or early mail.
    DELETE FROM tasks WHERE run_id = p_run_id;
    DELETE FROM waits WHERE run_id = p_run_id AND status = 'open';
    DELETE FROM mailbox WHERE run_id = p_run_id;
    PERFORM pg_notify('durable_runs', p_run_id::text);
    PERFORM pg_notify('durable_finished', durable_finished_payload_v1(p_run_id));
    IF v_parent IS NOT NULL THEN
        FOR w IN UPDATE waits SET status = 'resolved', value = v_result, resolved_at = now()
                 WHERE child_id = p_run_id AND status = 'open'
                 RETURNING run_id, step, queue
        LOOP
            INSERT INTO tasks (run_id, kind, step, queue, priority, due_at)
            SELECT id, 'step', w.step, w.queue, priority, now() FROM executions
            WHERE id = w.run_id AND status IN ('running', 'waiting', 'pending')
            ON CONFLICT (run_id, kind, step) WHERE run_id IS NOT NULL DO UPDATE SET due_at = now();
            PERFORM pg_notify('durable_tasks', w.queue);
            PERFORM pg_notify('durable_runs', w.run_id::text);
        END LOOP;
    END IF;
    RETURN true;
END;
$$;

-- As durable_checkpoint_batch_v1, finishing runs with durable_succeed_v2.
CREATE FUNCTION durable_checkpoint_batch_v2(p_task_ids bigint[], p_tokens uuid[], p_run_ids uuid[], p_steps text[],
                                            p_attempts integer[], p_contexts text[], p_worker text,
                                            p_started_ats timestamptz[], p_nexts text[], p_next_queues text[],
                                            p_new_tokens uuid[], p_ttl double precision)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    v_ok boolean[] := '{}';
BEGIN
    FOR i IN 1 .. coalesce(array_length(p_task_ids, 1), 0) LOOP
        IF p_nexts[i] IS NULL THEN
            v_ok := v_ok || durable_succeed_v2(p_task_ids[i], p_tokens[i], p_run_ids[i], p_steps[i], p_attempts[i],
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
