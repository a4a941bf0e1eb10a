-- The hot path of a sequential pipeline as versioned functions: one call (one round trip, one
-- plan-cached execution) per step checkpoint. A later change adds a _v2 beside these, so workers
-- of the previous release keep working during a rolling upgrade.

-- Record a succeeded step and point the task at the next node. p_new_token keeps the lease
-- (fast path); NULL hands the task back to the queue. Returns false, changing nothing, when the
-- lease was lost or the run is no longer active.
CREATE FUNCTION durable_advance_v1(p_task_id bigint, p_token uuid, p_run_id uuid, p_step text, p_attempt integer,
                                   p_context jsonb, p_worker text, p_started_at timestamptz, p_next text,
                                   p_next_queue text, p_new_token uuid, p_ttl double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
BEGIN
    PERFORM 1 FROM executions WHERE id = p_run_id AND status IN ('running', 'waiting', 'pending') FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    UPDATE tasks SET kind = 'step', step = p_next, queue = p_next_queue, attempt = 1, due_at = now(),
                     lease_token = p_new_token,
                     lease_owner = CASE WHEN p_new_token IS NULL THEN NULL ELSE lease_owner END,
                     lease_expires_at = CASE WHEN p_new_token IS NULL THEN NULL
                                             ELSE now() + make_interval(secs => p_ttl) END
    WHERE id = p_task_id AND lease_token = p_token;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_step IS NOT NULL THEN
        INSERT INTO steps (run_id, name, kind, attempt, status, final, output, worker, started_at)
        VALUES (p_run_id, p_step, 'step', p_attempt, 'succeeded', true, p_context, p_worker, p_started_at);
    END IF;
    UPDATE executions SET context = coalesce(p_context, context), current_step = p_next, attempt = 1,
                          status = 'running', updated_at = now()
    WHERE id = p_run_id;
    PERFORM pg_notify('durable_runs', p_run_id::text);
    IF p_new_token IS NULL THEN
        PERFORM pg_notify('durable_tasks', p_next_queue);
    END IF;
    RETURN true;
END;
$$;

-- Record the last step and finish the run succeeded; wake a parent waiting on it.
CREATE FUNCTION durable_succeed_v1(p_task_id bigint, p_token uuid, p_run_id uuid, p_step text, p_attempt integer,
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
    PERFORM pg_notify('durable_finished', p_run_id::text);
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

-- Create a run with its first task (and deadline timer) in one call. Returns the run id and
-- whether it was created (false: an existing run already had p_key).
CREATE FUNCTION durable_start_v1(p_id uuid, p_workflow text, p_hash text, p_queue text, p_priority integer,
                                 p_input jsonb, p_first_step text, p_key text, p_parent_id uuid, p_parent_step text,
                                 p_parent_wait_idx integer, p_scheduled_at timestamptz, p_deadline timestamptz,
                                 OUT run_id uuid, OUT created boolean)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO executions (id, workflow, definition_hash, status, queue, priority, input, context, current_step,
                            idempotency_key, parent_id, parent_step, parent_wait_idx, scheduled_at, deadline)
    VALUES (p_id, p_workflow, p_hash, 'pending', p_queue, p_priority, p_input, p_input, p_first_step, p_key,
            p_parent_id, p_parent_step, p_parent_wait_idx, p_scheduled_at, p_deadline)
    ON CONFLICT (idempotency_key) DO NOTHING;
    IF NOT FOUND THEN
        SELECT id INTO run_id FROM executions WHERE idempotency_key = p_key;
        created := false;
        RETURN;
    END IF;
    INSERT INTO tasks (run_id, kind, step, queue, priority, due_at)
    VALUES (p_id, 'step', p_first_step, p_queue, p_priority, coalesce(p_scheduled_at, now()));
    IF p_deadline IS NOT NULL THEN
        INSERT INTO tasks (run_id, kind, step, queue, priority, due_at)
        VALUES (p_id, 'deadline', '', p_queue, p_priority, p_deadline);
    END IF;
    PERFORM pg_notify('durable_tasks', p_queue);
    PERFORM pg_notify('durable_runs', p_id::text);
    run_id := p_id;
    created := true;
END;
$$;
