-- A task that carries a run's main line follows its run: kind 'run', whose step and attempt are
-- the run's own (executions.current_step and attempt). Moving such a run on to its next step on
-- the fast path then changes nothing in the task row, which is leased to the same worker and
-- keeps its token: one row update (and its four index entries) fewer per step after the first,
-- on the path every checkpoint of a sequential pipeline takes. A repeated checkpoint (after an unknown outcome) is
-- fenced by the run's position instead of a changed token: it no longer matches.
--
-- Which rows follow their run: a task that moves on to the next step on the fast path becomes
-- one (parallel members never do: they end in member_done, not in a move), and the lease turns
-- into one the first attempt of the run's current step when that step has no waits (one more
-- row update there, for the two or more it saves in the checkpoints that follow). That rules
-- out a parallel member (the run's current step is its parallel block, unless a retry of the
-- member made it the current step, and then the member's row is past its first attempt or, woken
-- from a wait, has that wait) and a step parked on a timer whose wake-up may race its timeout
-- (it has its wait). A step that suspends on a wait, or a move to another queue, makes the row a
-- plain step again (with the run's attempt), so a wait's wake-up, keyed on run, kind and step,
-- finds it.
--
-- During a rolling upgrade a worker of release 1 cannot run a 'run' task it happens to lease
-- (after a newer worker died holding it): the task fails on that worker, its lease expires,
-- and a newer worker takes it.
ALTER TABLE tasks DROP CONSTRAINT tasks_kind_check;
ALTER TABLE tasks ADD CONSTRAINT tasks_kind_check CHECK (kind IN ('step', 'run', 'join', 'compensate', 'deadline', 'cron'));

-- As durable_advance_v1 (migration 0003), for rows that may follow their run: when the row does
-- and stays ours (p_new_token = p_token), it is only checked, not written.
CREATE FUNCTION durable_advance_v2(p_task_id bigint, p_token uuid, p_run_id uuid, p_step text, p_attempt integer,
                                   p_context jsonb, p_worker text, p_started_at timestamptz, p_next text,
                                   p_next_queue text, p_new_token uuid, p_ttl double precision)
RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    v_current text;
    v_kind text;
BEGIN
    SELECT current_step INTO v_current FROM executions
    WHERE id = p_run_id AND status IN ('running', 'waiting', 'pending') FOR UPDATE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    -- Locked (weakly, without a new row version), so the lease cannot pass to another worker
    -- before this checkpoint commits.
    SELECT kind INTO v_kind FROM tasks WHERE id = p_task_id AND lease_token = p_token FOR KEY SHARE;
    IF NOT FOUND THEN
        RETURN false;
    END IF;
    IF p_step IS NOT NULL AND v_current IS DISTINCT FROM p_step THEN
        -- The run has moved on: a repeat of a checkpoint already recorded (a row that follows the
        -- run keeps its token), or a row that is not the run's main line.
        RETURN false;
    END IF;
    IF v_kind = 'run' AND p_new_token = p_token THEN
        NULL;  -- the row follows the run and stays ours: nothing in it changes
    ELSE
        UPDATE tasks SET kind = CASE WHEN p_new_token IS NULL THEN 'step' ELSE 'run' END, step = p_next,
                         queue = p_next_queue, attempt = 1, due_at = now(), lease_token = p_new_token,
                         lease_owner = CASE WHEN p_new_token IS NULL THEN NULL ELSE lease_owner END,
                         lease_expires_at = CASE WHEN p_new_token IS NULL THEN NULL
                                                 ELSE now() + make_interval(secs => p_ttl) END
        WHERE id = p_task_id AND lease_token = p_token;
        IF NOT FOUND THEN
            RETURN false;
        END IF;
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

-- As durable_succeed_v2 (migration 0006), with its three clean-up deletes in one statement
-- (18 µs of a 82 µs call were theirs, mostly three executor start-ups; now about half that).
CREATE FUNCTION durable_succeed_v3(p_task_id bigint, p_token uuid, p_run_id uuid, p_step text, p_attempt integer,
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
    -- Sequential pipelines leave nothing else behind; this only touches rows of runs that had
    -- timers, waits or early mail. One statement: each costs an executor start-up.
    WITH gone_tasks AS (DELETE FROM tasks WHERE run_id = p_run_id),
         gone_waits AS (DELETE FROM waits WHERE run_id = p_run_id AND status = 'open')
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

-- As durable_checkpoint_batch_v2 (migration 0006), with durable_advance_v2 and
-- durable_succeed_v3, and the batch as a
-- JSON array (built with the C JSON encoder, see migration 0007) of
-- [task id, lease token, run id, step, attempt, started_at, next node, next queue, new token,
-- context] (JSON null for none): the same records, the same answers in the same order.
CREATE FUNCTION durable_checkpoint_batch_v3(p_batch jsonb, p_worker text, p_ttl double precision)
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    v_ok boolean[] := '{}';
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(p_batch) LOOP
        IF e ->> 6 IS NULL THEN
            v_ok := v_ok || durable_succeed_v3((e ->> 0)::bigint, (e ->> 1)::uuid, (e ->> 2)::uuid, e ->> 3,
                                               (e ->> 4)::integer, nullif(e -> 9, 'null'), p_worker,
                                               (e ->> 5)::timestamptz);
        ELSE
            v_ok := v_ok || durable_advance_v2((e ->> 0)::bigint, (e ->> 1)::uuid, (e ->> 2)::uuid, e ->> 3,
                                               (e ->> 4)::integer, nullif(e -> 9, 'null'), p_worker,
                                               (e ->> 5)::timestamptz, e ->> 6, e ->> 7, (e ->> 8)::uuid, p_ttl);
        END IF;
    END LOOP;
    RETURN v_ok;
END;
$$;

-- As durable_lease_v1 (migration 0004), with the rows that follow their run (above), and a round
-- that fills every free slot also says whether anything else is ready: when nothing is, it ends
-- with the drained marker too (id NULL, next_due). Release 1 reported such a round as not
-- drained, so the worker, not knowing whether tasks were left behind, sent a round as soon as a
-- slot freed up; in a busy worker a quarter of all rounds then found nothing.
CREATE FUNCTION durable_lease_v2(p_queue text, p_limit integer, p_owner text, p_ttl double precision)
RETURNS TABLE (id bigint, run_id uuid, kind text, step text, schedule_name text, queue text, priority integer,
               attempt integer, lease_token uuid, workflow text, run_queue text, status text, context jsonb,
               deadline timestamptz, has_journal boolean, started boolean, next_due double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
    v_leased integer := 0;
    v_prio integer;
    v_next timestamptz;
    v_more boolean := true;
    v_current text;
    v_attempt integer;
    v_step text;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    v_prio := (SELECT t.priority FROM tasks t WHERE t.queue = p_queue ORDER BY t.priority DESC LIMIT 1);
    WHILE v_prio IS NOT NULL AND v_leased < p_limit LOOP
        FOR r IN
            WITH picked AS (
                SELECT t.id FROM tasks t
                WHERE t.queue = p_queue AND t.priority = v_prio AND t.due_at <= now()
                  AND (t.lease_token IS NULL OR t.lease_expires_at < now())
                ORDER BY t.due_at, t.id
                LIMIT p_limit - v_leased
                FOR UPDATE SKIP LOCKED
            )
            UPDATE tasks t
            SET lease_token = gen_random_uuid(), lease_owner = p_owner,
                lease_expires_at = now() + make_interval(secs => p_ttl)
            FROM picked WHERE t.id = picked.id
            RETURNING t.id, t.run_id, t.kind, t.step, t.schedule_name, t.queue, t.priority, t.attempt, t.lease_token
        LOOP
            v_leased := v_leased + 1;
            id := r.id; run_id := r.run_id; kind := r.kind; step := r.step; schedule_name := r.schedule_name;
            queue := r.queue; priority := r.priority; attempt := r.attempt; lease_token := r.lease_token;
            workflow := NULL; run_queue := NULL; status := NULL; context := NULL; deadline := NULL;
            has_journal := false; started := false; next_due := NULL;
            IF r.run_id IS NOT NULL THEN
                IF r.kind IN ('step', 'join', 'run') THEN
                    UPDATE executions e
                    SET status = 'running', started_at = coalesce(e.started_at, now()), updated_at = now()
                    WHERE e.id = r.run_id AND e.status IN ('pending', 'waiting')
                    RETURNING e.workflow, e.queue, e.status, e.context, e.deadline, e.current_step, e.attempt
                    INTO workflow, run_queue, status, context, deadline, v_current, v_attempt;
                    started := FOUND;
                END IF;
                IF started THEN
                    PERFORM pg_notify('durable_runs', r.run_id::text);
                ELSE
                    SELECT e.workflow, e.queue, e.status, e.context, e.deadline, e.current_step, e.attempt
                    INTO workflow, run_queue, status, context, deadline, v_current, v_attempt
                    FROM executions e WHERE e.id = r.run_id;
                END IF;
                IF r.kind = 'run' THEN
                    step := v_current;
                    -- 0 until the run's first checkpoint or retry: the row's own first attempt then
                    attempt := CASE WHEN v_attempt > 0 THEN v_attempt ELSE r.attempt END;
                END IF;
                v_step := step;
                has_journal := EXISTS (SELECT 1 FROM waits w WHERE w.run_id = r.run_id AND w.step = v_step);
                -- Decided here, not in the picking statement: a row its previous holder parked on
                -- a wait just before that statement took it is re-checked there against its new
                -- version, but that statement's subqueries would not see the new wait; these
                -- statements do, and the row is ours now.
                IF r.kind = 'step' AND r.attempt = 1 AND r.step = v_current AND NOT has_journal THEN
                    UPDATE tasks SET kind = 'run' WHERE tasks.id = r.id;
                    kind := 'run';
                END IF;
            END IF;
            RETURN NEXT;
        END LOOP;
        v_prio := (SELECT t.priority FROM tasks t WHERE t.queue = p_queue AND t.priority < v_prio
                   ORDER BY t.priority DESC LIMIT 1);
    END LOOP;
    IF v_leased >= p_limit THEN
        -- Every free slot is filled: is anything else ready? Not the tasks just leased (their
        -- leases are visible here); tasks a peer is leasing right now count, which only costs a
        -- round that finds nothing. One bounded range per priority, as the pick above.
        v_more := false;
        v_prio := (SELECT t.priority FROM tasks t WHERE t.queue = p_queue ORDER BY t.priority DESC LIMIT 1);
        WHILE v_prio IS NOT NULL AND NOT v_more LOOP
            v_more := EXISTS (SELECT 1 FROM tasks t
                              WHERE t.queue = p_queue AND t.priority = v_prio AND t.due_at <= now()
                                AND (t.lease_token IS NULL OR t.lease_expires_at < now()));
            v_prio := (SELECT t.priority FROM tasks t WHERE t.queue = p_queue AND t.priority < v_prio
                       ORDER BY t.priority DESC LIMIT 1);
        END LOOP;
    END IF;
    IF v_leased < p_limit OR NOT v_more THEN
        -- Separate statements: they must see the leases just taken (their expiry, not their due time).
        id := NULL; run_id := NULL; kind := NULL; step := NULL; schedule_name := NULL; queue := p_queue;
        priority := NULL; attempt := NULL; lease_token := NULL; workflow := NULL; run_queue := NULL;
        status := NULL; context := NULL; deadline := NULL; has_journal := NULL; started := NULL;
        -- The earliest unleased task of each priority is at the front of its index range, behind at
        -- most the few in flight; leases in flight are found through tasks_by_lease.
        v_prio := (SELECT t.priority FROM tasks t WHERE t.queue = p_queue ORDER BY t.priority DESC LIMIT 1);
        WHILE v_prio IS NOT NULL LOOP
            v_next := least(v_next, (SELECT t.due_at FROM tasks t
                                     WHERE t.queue = p_queue AND t.priority = v_prio AND t.lease_token IS NULL
                                     ORDER BY t.due_at LIMIT 1));
            v_prio := (SELECT t.priority FROM tasks t WHERE t.queue = p_queue AND t.priority < v_prio
                       ORDER BY t.priority DESC LIMIT 1);
        END LOOP;
        v_next := least(v_next, (SELECT t.lease_expires_at FROM tasks t
                                 WHERE t.lease_token IS NOT NULL AND t.queue = p_queue
                                 ORDER BY t.lease_expires_at LIMIT 1));
        next_due := extract(epoch FROM (v_next - now()))::double precision;
        RETURN NEXT;
    END IF;
END;
$$;
