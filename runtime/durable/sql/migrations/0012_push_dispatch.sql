-- Push dispatch of new runs. A worker offers its free slots here; a start that finds an offered
-- slot of its queue leases the run's first task to that worker in the start's own transaction
-- and names the worker and the slot in a 'durable_push' notification that carries the task. The
-- worker runs it as it arrives: no dispatch round (about 170 µs of server CPU per run), no round
-- trip, and no pending-to-running update between the start and the first step.
--
-- Nothing depends on the notification arriving or the worker living:
--   * an offer is taken only while its worker's heartbeat (alive_until) is fresh, so a worker
--     killed without warning is offered work for a few seconds at most;
--   * a pushed task is an ordinary leased task: if its worker dies, the lease expires and any
--     worker's poll takes it, as for a worker killed mid-step;
--   * a worker whose LISTEN connection broke withdraws its offers, then looks up the tasks pushed
--     to its slots that it never received (slot.task_id), before it offers again.
-- A worker takes back an offer (free = false) before it leases by polling with that slot, so a
-- slot never gets a pushed task and a polled one at once. Workers of earlier releases offer
-- nothing and never see a pushed task (it is leased); clients of earlier releases start runs
-- with durable_start_batch_v1 / durable_start_v1, which push nothing.

CREATE TABLE dispatch_workers (
    owner          text PRIMARY KEY,
    lease_seconds  double precision NOT NULL,
    alive_until    timestamptz NOT NULL
);

-- Small and rewritten all the time: no index but the key, whose columns never change, so every
-- update is a heap-only one, and room on each page for the new row versions.
CREATE TABLE dispatch_slots (
    owner       text NOT NULL REFERENCES dispatch_workers (owner) ON DELETE CASCADE,
    slot        integer NOT NULL,
    queue       text NOT NULL,
    free        boolean NOT NULL DEFAULT false,
    free_since  timestamptz NOT NULL DEFAULT now(),
    task_id     bigint,  -- the last task pushed to this slot
    PRIMARY KEY (owner, slot)
) WITH (fillfactor = 50);

-- Register a worker and its slots (p_slots[i] serves p_queues[i]), offering none yet. Also drops
-- workers whose heartbeat stopped long ago, with their slots.
CREATE FUNCTION durable_register_slots_v1(p_owner text, p_slots integer[], p_queues text[],
                                          p_lease_seconds double precision, p_alive double precision)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    DELETE FROM dispatch_workers WHERE alive_until < now() - interval '1 hour';
    INSERT INTO dispatch_workers (owner, lease_seconds, alive_until)
    VALUES (p_owner, p_lease_seconds, now() + make_interval(secs => p_alive))
    ON CONFLICT (owner) DO UPDATE SET lease_seconds = EXCLUDED.lease_seconds, alive_until = EXCLUDED.alive_until;
    INSERT INTO dispatch_slots (owner, slot, queue)
    SELECT p_owner, s, q FROM unnest(p_slots, p_queues) AS u(s, q)
    ON CONFLICT (owner, slot) DO UPDATE SET queue = EXCLUDED.queue, free = false;
END;
$$;

-- Offer slots (p_free = true) or take offers back (false). Returns, for each slot of p_slots,
-- whether it was offered before this call and the last task pushed to it: a slot taken back
-- that was no longer offered got a task, which the worker must run (its notification may be on
-- its way, or lost). Only hints are written, so nothing waits for a WAL flush: an offer lost in a
-- server crash sends new runs through the queue; a lost withdrawal may push a run to a slot that
-- is busy, which the worker refuses, and the run waits for its lease to expire.
CREATE FUNCTION durable_offer_slots_v1(p_owner text, p_slots integer[], p_free boolean)
RETURNS TABLE (slot integer, was_free boolean, task_id bigint) LANGUAGE plpgsql AS $$
#variable_conflict use_column
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    RETURN QUERY
    WITH old AS (
        SELECT d.slot, d.free, d.task_id FROM dispatch_slots d
        WHERE d.owner = p_owner AND d.slot = ANY(p_slots)
        FOR UPDATE
    )
    UPDATE dispatch_slots d SET free = p_free, free_since = CASE WHEN p_free THEN now() ELSE d.free_since END
    FROM old WHERE d.owner = p_owner AND d.slot = old.slot
    RETURNING old.slot, old.free, old.task_id;
END;
$$;

-- The worker's heartbeat: keeps its offers takeable for p_alive seconds more. False when the
-- worker is no longer registered (deleted as long dead): it must register again.
CREATE FUNCTION durable_heartbeat_v1(p_owner text, p_alive double precision) RETURNS boolean
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM set_config('synchronous_commit', 'off', true);
    UPDATE dispatch_workers SET alive_until = now() + make_interval(secs => p_alive) WHERE owner = p_owner;
    RETURN FOUND;
END;
$$;

-- A worker leaving: its offers go, and the tasks pushed to it that it never received (the last
-- task of each slot, unless it is in p_received) go back to their queues, which are woken,
-- instead of waiting for their leases to expire.
CREATE FUNCTION durable_unregister_slots_v1(p_owner text, p_received bigint[]) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    v_queue text;
BEGIN
    FOR v_queue IN
        WITH gone AS (
            DELETE FROM dispatch_slots d WHERE d.owner = p_owner RETURNING d.task_id
        ), released AS (
            UPDATE tasks t SET lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
            FROM gone
            WHERE t.id = gone.task_id AND t.lease_owner = p_owner AND NOT (t.id = ANY(p_received))
            RETURNING t.queue
        )
        SELECT DISTINCT released.queue FROM released
    LOOP
        PERFORM pg_notify('durable_tasks', v_queue);
    END LOOP;
    DELETE FROM dispatch_workers WHERE owner = p_owner;
END;
$$;

-- The tasks pushed to p_owner's slots p_slots and leased to it still (an expired lease is any
-- worker's to take), as durable_lease_v3 returns them: for a worker whose notifications were lost.
CREATE FUNCTION durable_pushed_tasks_v1(p_owner text, p_slots integer[])
RETURNS TABLE (slot integer, id bigint, run_id uuid, kind text, step text, schedule_name text, queue text,
               priority integer, attempt integer, lease_token uuid, workflow text, run_queue text, status text,
               context jsonb, deadline timestamptz, has_journal boolean, started boolean)
LANGUAGE sql STABLE AS $$
    SELECT d.slot, t.id, t.run_id, t.kind, t.step, t.schedule_name, t.queue, t.priority, t.attempt, t.lease_token,
           e.workflow, e.queue, e.status, e.context, e.deadline,
           EXISTS (SELECT 1 FROM waits w WHERE w.run_id = t.run_id AND w.step = t.step), false
    FROM dispatch_slots d
    JOIN tasks t ON t.id = d.task_id AND t.lease_owner = d.owner AND t.lease_expires_at > now()
    JOIN executions e ON e.id = t.run_id
    WHERE d.owner = p_owner AND d.slot = ANY(p_slots);
$$;

-- As durable_start_batch_v1 (migration 0007), and each run due now goes to an offered slot of its
-- queue when there is one: the longest-free slot of a live worker, which spreads runs over
-- workers; a slot another start is taking is skipped, not waited for. The run is created
-- running, its first task leased to that worker for the worker's lease_seconds, and the worker
-- told on 'durable_push' with '<owner> <JSON array>': slot, task id, lease token, run id,
-- workflow, step, queue, priority, deadline, and the input (JSON null, with the flag after it
-- false, when it would not fit in a notification: the worker reads it).
CREATE FUNCTION durable_start_batch_v2(p_starts jsonb)
RETURNS TABLE (run_id uuid, created boolean) LANGUAGE plpgsql AS $$
DECLARE
    e jsonb;
    r record;
    v_owner text;
    v_slot integer;
    v_ttl double precision;
    v_id uuid;
    v_queue text;
    v_priority integer;
    v_at timestamptz;
    v_deadline timestamptz;
    v_token uuid;
    v_task bigint;
    v_payload text;
BEGIN
    FOR e IN SELECT value FROM jsonb_array_elements(p_starts) LOOP
        v_at := (e ->> 7)::timestamptz;
        v_owner := NULL;
        IF v_at IS NULL OR v_at <= now() THEN
            SELECT d.owner, d.slot, w.lease_seconds INTO v_owner, v_slot, v_ttl
            FROM dispatch_slots d JOIN dispatch_workers w ON w.owner = d.owner
            WHERE d.queue = e ->> 3 AND d.free AND w.alive_until > now()
            ORDER BY d.free_since
            LIMIT 1
            FOR UPDATE OF d SKIP LOCKED;
        END IF;
        IF v_owner IS NULL THEN
            SELECT st.run_id, st.created INTO r
            FROM durable_start_v1((e ->> 0)::uuid, e ->> 1, e ->> 2, e ->> 3, (e ->> 4)::integer, e -> 9, e ->> 5,
                                  e ->> 6, NULL, NULL, NULL, v_at, (e ->> 8)::timestamptz) st;
            run_id := r.run_id;
            created := r.created;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_id := (e ->> 0)::uuid;
        v_queue := e ->> 3;
        v_priority := (e ->> 4)::integer;
        v_deadline := (e ->> 8)::timestamptz;
        INSERT INTO executions (id, workflow, definition_hash, status, queue, priority, input, context, current_step,
                                idempotency_key, scheduled_at, deadline, started_at)
        VALUES (v_id, e ->> 1, e ->> 2, 'running', v_queue, v_priority, e -> 9, e -> 9, e ->> 5, e ->> 6, v_at,
                v_deadline, now())
        ON CONFLICT (idempotency_key) DO NOTHING;
        IF NOT FOUND THEN
            -- The key names an existing run; the slot stays offered.
            SELECT x.id INTO run_id FROM executions x WHERE x.idempotency_key = e ->> 6;
            created := false;
            RETURN NEXT;
            CONTINUE;
        END IF;
        v_token := gen_random_uuid();
        INSERT INTO tasks (run_id, kind, step, queue, priority, due_at, lease_token, lease_owner, lease_expires_at)
        VALUES (v_id, 'step', e ->> 5, v_queue, v_priority, now(), v_token, v_owner,
                now() + make_interval(secs => v_ttl))
        RETURNING tasks.id INTO v_task;
        IF v_deadline IS NOT NULL THEN
            INSERT INTO tasks (run_id, kind, step, queue, priority, due_at)
            VALUES (v_id, 'deadline', '', v_queue, v_priority, v_deadline);
        END IF;
        UPDATE dispatch_slots d SET free = false, task_id = v_task WHERE d.owner = v_owner AND d.slot = v_slot;
        v_payload := v_owner || ' ' || json_build_array(v_slot, v_task, v_token, v_id, e ->> 1, e ->> 5, v_queue,
                                                         v_priority, v_deadline, e -> 9, true)::text;
        IF octet_length(v_payload) > 7900 THEN  -- a notification holds under 8000 bytes
            v_payload := v_owner || ' ' || json_build_array(v_slot, v_task, v_token, v_id, e ->> 1, e ->> 5, v_queue,
                                                             v_priority, v_deadline, NULL, false)::text;
        END IF;
        PERFORM pg_notify('durable_push', v_payload);
        PERFORM pg_notify('durable_runs', v_id::text);
        run_id := v_id;
        created := true;
        RETURN NEXT;
    END LOOP;
END;
$$;

-- As durable_checkpoint_batch_v3 (migration 0007), and p_worker's slots p_offer (those whose task
-- chain ends with this checkpoint) are offered in the same commit: before the runs it finishes
-- are seen finished, so a client that starts its next run on seeing one finish finds the slot.
CREATE FUNCTION durable_checkpoint_batch_v4(p_batch jsonb, p_worker text, p_ttl double precision,
                                            p_offer integer[])
RETURNS boolean[] LANGUAGE plpgsql AS $$
DECLARE
    v_ok boolean[];
BEGIN
    v_ok := durable_checkpoint_batch_v3(p_batch, p_worker, p_ttl);
    IF cardinality(p_offer) > 0 THEN
        UPDATE dispatch_slots d SET free = true, free_since = now()
        WHERE d.owner = p_worker AND d.slot = ANY(p_offer);
    END IF;
    RETURN v_ok;
END;
$$;
