-- Named queries, loaded into a dict by durable.db. Parameters are always bound, never formatted.

-- name: upsert_workflow
INSERT INTO workflows (name, hash, first_step, graph, updated_at)
VALUES (%(name)s, %(hash)s, %(first_step)s, %(graph)s::jsonb, now())
ON CONFLICT (name) DO UPDATE
SET hash = EXCLUDED.hash, first_step = EXCLUDED.first_step, graph = EXCLUDED.graph, updated_at = now()
WHERE workflows.hash IS DISTINCT FROM EXCLUDED.hash;

-- name: upsert_queues
INSERT INTO queues (name) SELECT unnest(%(names)s::text[]) ON CONFLICT DO NOTHING;

-- name: get_workflow
SELECT name, hash, first_step, graph FROM workflows WHERE name = %(name)s;

-- name: list_workflow_names
SELECT name FROM workflows ORDER BY name;

-- name: queue_exists
SELECT EXISTS (SELECT 1 FROM queues WHERE name = %(name)s);

-- name: list_queue_names
SELECT name FROM queues ORDER BY name;

-- name: start_v1
SELECT run_id, created FROM durable_start_v1(%(id)s, %(workflow)s, %(hash)s, %(queue)s, %(priority)s, %(input)s::jsonb,
                                             %(first_step)s, %(idempotency_key)s, %(parent_id)s, %(parent_step)s,
                                             %(parent_wait_idx)s, %(scheduled_at)s, %(deadline)s);

-- name: start_batch_v2
-- Pushes each run due now to an offered worker slot when there is one (migration 0012).
SELECT run_id, created FROM durable_start_batch_v2(%(starts)s::jsonb);

-- name: register_slots
SELECT durable_register_slots_v1(%(owner)s, %(slots)s::integer[], %(queues)s::text[], %(lease_seconds)s, %(alive)s);

-- name: offer_slots
SELECT slot, was_free, task_id FROM durable_offer_slots_v1(%(owner)s, %(slots)s::integer[], %(free)s);

-- name: heartbeat
SELECT durable_heartbeat_v1(%(owner)s, %(alive)s);

-- name: unregister_slots
SELECT durable_unregister_slots_v1(%(owner)s, %(received)s::bigint[]);

-- name: checkpoint_batch_v4
SELECT durable_checkpoint_batch_v4(%(batch)s::jsonb, %(worker)s, %(ttl)s, %(offer)s::integer[]);

-- name: pushed_tasks
SELECT * FROM durable_pushed_tasks_v1(%(owner)s, %(slots)s::integer[]);

-- name: insert_task
INSERT INTO tasks (run_id, kind, step, queue, priority, due_at, attempt)
VALUES (%(run_id)s, %(kind)s, %(step)s, %(queue)s, %(priority)s, coalesce(%(due_at)s, now()), 1)
ON CONFLICT (run_id, kind, step) WHERE run_id IS NOT NULL DO UPDATE SET due_at = LEAST(tasks.due_at, EXCLUDED.due_at)
RETURNING id;

-- name: insert_leased_task
INSERT INTO tasks (run_id, kind, step, queue, priority, due_at, attempt, lease_token, lease_owner, lease_expires_at)
VALUES (%(run_id)s, %(kind)s, %(step)s, %(queue)s, %(priority)s, now(), 1, %(token)s, %(owner)s,
        now() + make_interval(secs => %(ttl)s))
ON CONFLICT (run_id, kind, step) WHERE run_id IS NOT NULL DO NOTHING
RETURNING id;

-- name: notify_tasks
SELECT pg_notify('durable_tasks', %(queue)s);

-- name: notify_run
SELECT pg_notify('durable_runs', %(run_id)s::text);

-- name: notify_finished
-- The finished run itself travels with the notification (migration 0006), so a waiting client need not read it.
SELECT pg_notify('durable_finished', durable_finished_payload_v1(%(run_id)s::uuid));

-- name: lease_v3
-- The worker announces the runs it starts (migration 0010, announce.RunAnnouncer).
SELECT * FROM durable_lease_v3(%(queue)s, %(limit)s, %(owner)s, %(ttl)s);

-- name: announce_runs
SELECT durable_announce_runs_v1(%(runs)s::uuid[]);

-- name: journal
SELECT idx, kind, names, status, value, until, has_timeout_value, timeout_value
FROM waits WHERE run_id = %(run_id)s AND step = %(step)s ORDER BY idx;

-- name: time_out_wait
UPDATE waits SET status = 'timed_out', value = CASE WHEN kind = 'sleep' THEN NULL ELSE timeout_value END,
                 resolved_at = now()
WHERE run_id = %(run_id)s AND step = %(step)s AND idx = %(idx)s AND status = 'open' AND until <= now()
RETURNING idx;

-- name: renew_leases
UPDATE tasks SET lease_expires_at = now() + make_interval(secs => %(ttl)s)
WHERE lease_token = ANY(%(tokens)s::uuid[]);

-- name: lock_execution
SELECT id, workflow, status, queue, priority, context, parent_id, parent_step, parent_wait_idx, error
FROM executions WHERE id = %(run_id)s FOR UPDATE;

-- name: guard_task
SELECT id FROM tasks WHERE id = %(task_id)s AND lease_token = %(token)s FOR UPDATE;

-- name: advance_task
UPDATE tasks SET kind = %(kind)s, step = %(step)s, queue = %(queue)s, attempt = 1, due_at = now(),
                 lease_token = %(new_token)s, lease_owner = CASE WHEN %(new_token)s::uuid IS NULL THEN NULL ELSE lease_owner END,
                 lease_expires_at = CASE WHEN %(new_token)s::uuid IS NULL THEN NULL
                                         ELSE now() + make_interval(secs => %(ttl)s) END
WHERE id = %(task_id)s AND lease_token = %(token)s
RETURNING id;

-- name: retry_task
UPDATE tasks SET attempt = attempt + 1, due_at = now() + make_interval(secs => %(delay)s),
                 lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(task_id)s AND lease_token = %(token)s
RETURNING id;

-- name: park_task
UPDATE tasks SET due_at = %(due_at)s, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(task_id)s AND lease_token = %(token)s
RETURNING id;

-- name: relock_task
UPDATE tasks SET lease_token = %(new_token)s, lease_expires_at = now() + make_interval(secs => %(ttl)s)
WHERE id = %(task_id)s AND lease_token = %(token)s
RETURNING id;

-- name: delete_task
DELETE FROM tasks WHERE id = %(task_id)s AND lease_token = %(token)s RETURNING id;

-- name: delete_run_tasks
DELETE FROM tasks WHERE run_id = %(run_id)s;

-- name: count_other_ready_tasks
SELECT count(*) FROM tasks
WHERE run_id = %(run_id)s AND id <> %(task_id)s AND kind IN ('step', 'join', 'compensate')
  AND (due_at <= now() OR lease_token IS NOT NULL);

-- name: save_context
UPDATE executions
SET context = coalesce(%(context)s::jsonb, context), current_step = %(step)s, attempt = %(attempt)s,
    status = %(status)s, updated_at = now()
WHERE id = %(run_id)s;

-- name: set_status
UPDATE executions SET status = %(status)s, updated_at = now() WHERE id = %(run_id)s;

-- name: finish_execution
UPDATE executions
SET status = %(status)s, result = %(result)s::jsonb, error = %(error)s::jsonb,
    context = coalesce(%(context)s::jsonb, context), finished_at = now(), updated_at = now()
WHERE id = %(run_id)s
RETURNING parent_id, parent_step, parent_wait_idx;

-- name: set_error
UPDATE executions SET error = %(error)s::jsonb, status = %(status)s, updated_at = now() WHERE id = %(run_id)s;

-- name: insert_step
INSERT INTO steps (run_id, name, kind, attempt, status, final, output, error, worker, started_at)
VALUES (%(run_id)s, %(name)s, %(kind)s, %(attempt)s, %(status)s, %(final)s, %(output)s::jsonb, %(error)s::jsonb,
        %(worker)s, %(started_at)s);

-- name: succeeded_steps
SELECT name FROM steps WHERE run_id = %(run_id)s AND kind = 'step' AND status = 'succeeded' ORDER BY id DESC;

-- name: member_outcomes
SELECT DISTINCT ON (name) name, status, output, error FROM steps
WHERE run_id = %(run_id)s AND kind = 'step' AND final AND name = ANY(%(names)s::text[])
ORDER BY name, id DESC;

-- name: member_tasks
-- Members started and not finished: those with a task row, and those parked on a wait without a
-- timer, which have none.
SELECT step FROM tasks WHERE run_id = %(run_id)s AND kind = 'step' AND step = ANY(%(names)s::text[])
UNION
SELECT step FROM waits WHERE run_id = %(run_id)s AND status = 'open' AND step = ANY(%(names)s::text[]);

-- name: insert_wait
INSERT INTO waits (run_id, step, idx, kind, names, prompt, until, has_timeout_value, timeout_value, queue)
VALUES (%(run_id)s, %(step)s, %(idx)s, %(kind)s, %(names)s, %(prompt)s, %(until)s, %(has_timeout_value)s,
        %(timeout_value)s::jsonb, %(queue)s)
ON CONFLICT (run_id, step, idx) DO NOTHING;

-- name: wait_row
SELECT status, received, until, child_id FROM waits
WHERE run_id = %(run_id)s AND step = %(step)s AND idx = %(idx)s FOR UPDATE;

-- name: resolve_wait
UPDATE waits SET status = %(status)s, value = %(value)s::jsonb, received = coalesce(%(received)s::jsonb, received),
                 resolved_at = CASE WHEN %(status)s = 'open' THEN NULL ELSE now() END
WHERE run_id = %(run_id)s AND step = %(step)s AND idx = %(idx)s AND status = 'open'
RETURNING queue;

-- name: set_wait_child
UPDATE waits SET child_id = %(child_id)s WHERE run_id = %(run_id)s AND step = %(step)s AND idx = %(idx)s;

-- name: take_mail
DELETE FROM mailbox
WHERE id = (SELECT id FROM mailbox WHERE run_id = %(run_id)s AND kind = %(kind)s AND name = ANY(%(names)s::text[])
            ORDER BY id LIMIT 1)
RETURNING name, payload;

-- name: put_mail
INSERT INTO mailbox (run_id, kind, name, payload) VALUES (%(run_id)s, %(kind)s, %(name)s, %(payload)s::jsonb);

-- name: open_wait_for
SELECT step, idx, kind, names, received, queue FROM waits
WHERE run_id = %(run_id)s AND status = 'open' AND kind = ANY(%(kinds)s::text[]) AND %(name)s = ANY(names)
  AND NOT (received ? %(name)s)
ORDER BY created_at, idx LIMIT 1;

-- name: wake_step
INSERT INTO tasks (run_id, kind, step, queue, priority, due_at)
SELECT id, 'step', %(step)s, %(queue)s, priority, now() FROM executions
WHERE id = %(run_id)s AND status IN ('running', 'waiting', 'pending')
ON CONFLICT (run_id, kind, step) WHERE run_id IS NOT NULL DO UPDATE SET due_at = now()
RETURNING id;

-- name: parent_wait_of_child
SELECT run_id, step, idx, queue FROM waits WHERE child_id = %(child_id)s AND status = 'open';

-- name: clear_run_waits
DELETE FROM waits WHERE run_id = %(run_id)s AND status = 'open';

-- name: clear_mailbox
DELETE FROM mailbox WHERE run_id = %(run_id)s;

-- name: get_run
-- A run with its step history and waits (migration 0006), in one round trip and one transaction.
SELECT durable_run_v1(%(run_id)s::uuid);

-- name: get_execution_brief
SELECT id, workflow, status, current_step, result, error, finished_at FROM executions WHERE id = %(run_id)s;

-- name: list_executions
SELECT e.id, e.workflow, e.definition_hash, e.status, e.queue, e.priority, e.input, e.context, e.current_step,
       e.attempt, e.result, e.error, e.idempotency_key, e.parent_id, e.scheduled_at, e.deadline, e.created_at,
       e.started_at, e.updated_at, e.finished_at,
       (w.graph -> 'index' ->> e.current_step)::int, (w.graph ->> 'total')::int
FROM executions e LEFT JOIN workflows w ON w.name = e.workflow
WHERE (%(workflow)s::text IS NULL OR e.workflow = %(workflow)s) AND (%(status)s::text IS NULL OR e.status = %(status)s)
ORDER BY e.created_at DESC LIMIT %(limit)s;

-- name: upsert_schedule
INSERT INTO schedules (name, workflow, cron, timezone, input, queue, next_fire_at)
VALUES (%(name)s, %(workflow)s, %(cron)s, %(timezone)s, %(input)s::jsonb, %(queue)s, %(next_fire_at)s)
ON CONFLICT (name) DO UPDATE
SET cron = EXCLUDED.cron, timezone = EXCLUDED.timezone, input = EXCLUDED.input, queue = EXCLUDED.queue,
    next_fire_at = CASE WHEN schedules.cron = EXCLUDED.cron AND schedules.timezone = EXCLUDED.timezone
                        THEN schedules.next_fire_at ELSE EXCLUDED.next_fire_at END,
    updated_at = now()
RETURNING next_fire_at;

-- name: upsert_cron_task
INSERT INTO tasks (kind, schedule_name, queue, due_at) VALUES ('cron', %(name)s, %(queue)s, %(due_at)s)
ON CONFLICT (schedule_name) WHERE kind = 'cron' DO UPDATE SET due_at = EXCLUDED.due_at, queue = EXCLUDED.queue;

-- name: get_schedule
SELECT name, workflow, cron, timezone, input, queue, next_fire_at, last_fire_at FROM schedules
WHERE name = %(name)s FOR UPDATE;

-- name: advance_schedule
UPDATE schedules SET last_fire_at = %(fired)s, next_fire_at = %(next)s, updated_at = now() WHERE name = %(name)s;

-- name: reschedule_cron_task
UPDATE tasks SET due_at = %(due_at)s, lease_token = NULL, lease_owner = NULL, lease_expires_at = NULL
WHERE id = %(task_id)s AND lease_token = %(token)s RETURNING id;

-- name: list_schedules
SELECT name, workflow, cron, timezone, queue, next_fire_at, last_fire_at FROM schedules ORDER BY name;

-- name: queue_depths
SELECT queue, count(*) FILTER (WHERE due_at <= now()),
       coalesce(extract(epoch FROM now() - min(due_at) FILTER (WHERE due_at <= now() AND lease_token IS NULL)), 0)
FROM tasks WHERE kind <> 'cron' GROUP BY queue;

-- name: active_waits
SELECT kind, count(*) FROM waits WHERE status = 'open' GROUP BY kind;

-- name: delete_run_tasks_except
DELETE FROM tasks WHERE run_id = %(run_id)s AND id <> %(task_id)s;

-- name: rename_task
UPDATE tasks SET step = %(step)s WHERE id = %(task_id)s AND lease_token = %(token)s;

-- name: run_context
SELECT context FROM executions WHERE id = %(run_id)s;

-- name: claim_delivery
INSERT INTO deliveries (run_id, delivery_id, outcome) VALUES (%(run_id)s, %(delivery_id)s, 'pending')
ON CONFLICT DO NOTHING RETURNING delivery_id;

-- name: delivery_outcome
SELECT outcome FROM deliveries WHERE run_id = %(run_id)s AND delivery_id = %(delivery_id)s;

-- name: set_delivery_outcome
UPDATE deliveries SET outcome = %(outcome)s WHERE run_id = %(run_id)s AND delivery_id = %(delivery_id)s;

-- name: advance_v1
SELECT durable_advance_v1(%(task_id)s, %(token)s, %(run_id)s, %(step)s, %(attempt)s, %(context)s::jsonb,
                          %(worker)s, %(started_at)s, %(next)s, %(next_queue)s, %(new_token)s, %(ttl)s);

-- name: succeed_v2
SELECT durable_succeed_v2(%(task_id)s, %(token)s, %(run_id)s, %(step)s, %(attempt)s, %(context)s::jsonb,
                          %(worker)s, %(started_at)s);
