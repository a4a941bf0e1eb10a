-- Cheaper dispatch rounds. durable_lease_v3 is durable_lease_v2 (migration 0008) with two changes.
--
-- It does not notify: the worker announces the runs it started (pending or waiting to running; the
-- rows returned with started = true) a few milliseconds later, many rounds' worth in one
-- notification-only commit (durable_announce_runs_v1, see announce.py). A commit that notifies takes
-- PostgreSQL's commit-time NOTIFY lock and holds it through its WAL flush, so under load a round,
-- itself on every new run's way to its first step, spent a third of its time waiting there behind
-- the flushes of step checkpoints and starts (pg_stat_activity: 'Lock: object'); and each notifying
-- commit wakes every listening backend.
--
-- Its report of when the queue's next task is due takes three statements instead of seven for a
-- queue of one priority (most rounds drain their queue, so most rounds report):
--   * it reuses the priorities the pick, or the search for more, has just walked;
--   * it no longer looks up the earliest lease to expire. A lease expires only when its worker
--     died or stalled, some lease_seconds (30 by default) after its last renewal; the next poll
--     (DURABLE_POLL_MAX_MS, 2 s by default) picks the task up, as the pick takes expired leases.

CREATE FUNCTION durable_lease_v3(p_queue text, p_limit integer, p_owner text, p_ttl double precision)
RETURNS TABLE (id bigint, run_id uuid, kind text, step text, schedule_name text, queue text, priority integer,
               attempt integer, lease_token uuid, workflow text, run_queue text, status text, context jsonb,
               deadline timestamptz, has_journal boolean, started boolean, next_due double precision)
LANGUAGE plpgsql AS $$
#variable_conflict use_column
DECLARE
    r record;
    v_leased integer := 0;
    v_prio integer;
    v_prios integer[] := '{}';
    v_next timestamptz;
    v_more boolean := true;
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    v_prio := (SELECT t.priority FROM tasks t WHERE t.queue = p_queue ORDER BY t.priority DESC LIMIT 1);
    WHILE v_prio IS NOT NULL AND v_leased < p_limit LOOP
        v_prios := v_prios || v_prio;
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
                IF r.kind IN ('step', 'join') THEN
                    UPDATE executions e
                    SET status = 'running', started_at = coalesce(e.started_at, now()), updated_at = now()
                    WHERE e.id = r.run_id AND e.status IN ('pending', 'waiting')
                    RETURNING e.workflow, e.queue, e.status, e.context, e.deadline
                    INTO workflow, run_queue, status, context, deadline;
                    started := FOUND;
                END IF;
                IF NOT started THEN
                    SELECT e.workflow, e.queue, e.status, e.context, e.deadline
                    INTO workflow, run_queue, status, context, deadline
                    FROM executions e WHERE e.id = r.run_id;
                END IF;
                has_journal := EXISTS (SELECT 1 FROM waits w WHERE w.run_id = r.run_id AND w.step = r.step);
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
        v_prios := '{}';  -- the pick stopped early, so it may not have walked every priority
        v_prio := (SELECT t.priority FROM tasks t WHERE t.queue = p_queue ORDER BY t.priority DESC LIMIT 1);
        WHILE v_prio IS NOT NULL AND NOT v_more LOOP
            v_prios := v_prios || v_prio;
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
        -- v_prios holds every priority of the queue: the pick, or the search for more, walked them all.
        -- The earliest unleased task of each is at the front of its index range, behind at most the
        -- few in flight.
        FOREACH v_prio IN ARRAY v_prios LOOP
            v_next := least(v_next, (SELECT t.due_at FROM tasks t
                                     WHERE t.queue = p_queue AND t.priority = v_prio AND t.lease_token IS NULL
                                     ORDER BY t.due_at LIMIT 1));
        END LOOP;
        next_due := extract(epoch FROM (v_next - now()))::double precision;
        RETURN NEXT;
    END IF;
END;
$$;

-- Notify 'durable_runs' for each of p_runs.
CREATE FUNCTION durable_announce_runs_v1(p_runs uuid[]) RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    -- Notifications only: nothing to make durable, so no WAL flush to wait for under the NOTIFY lock.
    PERFORM set_config('synchronous_commit', 'off', true);
    PERFORM pg_notify('durable_runs', r::text) FROM unnest(p_runs) r;
END;
$$;
