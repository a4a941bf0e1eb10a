-- The whole first schema. Later changes go into new numbered files; never edit this one once shipped.

CREATE TABLE workflows (
    name        text PRIMARY KEY,
    hash        text NOT NULL,
    first_step  text NOT NULL,
    graph       jsonb NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE queues (
    name        text PRIMARY KEY,
    created_at  timestamptz NOT NULL DEFAULT now()
);
INSERT INTO queues (name) VALUES ('default');

CREATE TABLE executions (
    id                uuid PRIMARY KEY,
    workflow          text NOT NULL,
    definition_hash   text NOT NULL,
    status            text NOT NULL CHECK (status IN ('pending', 'running', 'waiting', 'succeeded', 'failed',
                          'cancelled', 'compensating', 'compensated', 'timed_out')),
    queue             text NOT NULL,
    priority          integer NOT NULL DEFAULT 0,
    input             jsonb,
    context           jsonb,
    current_step      text,
    attempt           integer NOT NULL DEFAULT 0,
    result            jsonb,
    error             jsonb,
    idempotency_key   text UNIQUE,
    parent_id         uuid REFERENCES executions (id) ON DELETE SET NULL,
    parent_step       text,
    parent_wait_idx   integer,
    scheduled_at      timestamptz,
    deadline          timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    started_at        timestamptz,
    updated_at        timestamptz NOT NULL DEFAULT now(),
    finished_at       timestamptz
);
CREATE INDEX executions_by_created ON executions (created_at DESC);
CREATE INDEX executions_by_workflow ON executions (workflow, created_at DESC);
CREATE INDEX executions_by_status ON executions (status, created_at DESC);
CREATE INDEX executions_by_parent ON executions (parent_id) WHERE parent_id IS NOT NULL;

-- One row per finished step attempt (and per compensation attempt).
CREATE TABLE steps (
    id           bigserial PRIMARY KEY,
    run_id       uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    name         text NOT NULL,
    kind         text NOT NULL DEFAULT 'step' CHECK (kind IN ('step', 'compensation')),
    attempt      integer NOT NULL,
    status       text NOT NULL CHECK (status IN ('succeeded', 'failed')),
    -- false for a failed attempt that will be retried
    final        boolean NOT NULL DEFAULT true,
    output       jsonb,
    error        jsonb,
    worker       text,
    started_at   timestamptz NOT NULL,
    finished_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX steps_by_run ON steps (run_id, id);

-- The queue. Timers are rows with a future due_at; a lease is a token plus an expiry, so
-- recovery never depends on which worker (or pod name) held it.
CREATE TABLE tasks (
    id                bigserial PRIMARY KEY,
    run_id            uuid REFERENCES executions (id) ON DELETE CASCADE,
    kind              text NOT NULL CHECK (kind IN ('step', 'join', 'compensate', 'deadline', 'cron')),
    step              text NOT NULL DEFAULT '',
    schedule_name     text,
    queue             text NOT NULL,
    priority          integer NOT NULL DEFAULT 0,
    due_at            timestamptz NOT NULL DEFAULT now(),
    attempt           integer NOT NULL DEFAULT 1,
    lease_token       uuid,
    lease_owner       text,
    lease_expires_at  timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX tasks_one_per_step ON tasks (run_id, kind, step) WHERE run_id IS NOT NULL;
CREATE UNIQUE INDEX tasks_one_per_schedule ON tasks (schedule_name) WHERE kind = 'cron';
CREATE INDEX tasks_ready ON tasks (queue, priority DESC, due_at);
CREATE INDEX tasks_by_lease ON tasks (lease_expires_at) WHERE lease_token IS NOT NULL;

-- The wait journal: one row per (run, step, call index within the step).
CREATE TABLE waits (
    run_id             uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    step               text NOT NULL,
    idx                integer NOT NULL,
    kind               text NOT NULL,
    names              text[] NOT NULL,
    prompt             text,
    until              timestamptz,
    status             text NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'resolved', 'timed_out', 'failed')),
    value              jsonb,
    received           jsonb NOT NULL DEFAULT '{}'::jsonb,
    has_timeout_value  boolean NOT NULL DEFAULT false,
    timeout_value      jsonb,
    child_id           uuid,
    queue              text NOT NULL DEFAULT 'default',
    created_at         timestamptz NOT NULL DEFAULT now(),
    resolved_at        timestamptz,
    PRIMARY KEY (run_id, step, idx)
);
CREATE INDEX waits_open ON waits (run_id) WHERE status = 'open';
CREATE INDEX waits_by_child ON waits (child_id) WHERE child_id IS NOT NULL;

-- Events and inputs that arrived before a wait asked for them.
CREATE TABLE mailbox (
    id          bigserial PRIMARY KEY,
    run_id      uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('event', 'input')),
    name        text NOT NULL,
    payload     jsonb,
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX mailbox_by_run ON mailbox (run_id, kind, name, id);

CREATE TABLE schedules (
    name          text PRIMARY KEY,
    workflow      text NOT NULL,
    cron          text NOT NULL,
    timezone      text NOT NULL,
    input         jsonb,
    queue         text NOT NULL,
    next_fire_at  timestamptz NOT NULL,
    last_fire_at  timestamptz,
    updated_at    timestamptz NOT NULL DEFAULT now()
);
