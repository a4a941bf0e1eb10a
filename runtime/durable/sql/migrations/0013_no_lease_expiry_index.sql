-- tasks_by_lease indexed the lease expiry of leased tasks for a lookup no function makes any more:
-- every lease function finds expired leases while walking tasks_ready. It cost an entry on every
-- insert of a leased task and on every update of one (the fast path's checkpoints, which change
-- the task's step and so are never heap-only): three per workflow of a three-step pipeline. And
-- a worker renewing the leases of its long steps now changes no indexed column, so each renewal
-- is a heap-only update.
DROP INDEX tasks_by_lease;
