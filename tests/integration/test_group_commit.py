"""Group commit of step checkpoints and of starts: concurrent ones share one transaction, never one fate."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from durable import Client, Workflow, assign
from durable.checkpoint import GroupCommit, LeaseLost
from durable.db import connect, q
from durable.tasks import Task
from durable.worker import Worker
from tests.support import settings_for, wait_until

grouped = Workflow("t_gc_grouped")


@grouped.step
def gc_one(input: Any) -> Any:
    return {"n": input["n"] + 1}


@grouped.step
def gc_two(ctx: Any) -> Any:
    return assign(ctx, n=ctx["n"] + 1)


OWNER = "t-gc-owner"


@pytest.fixture(scope="module")
def setup(database_url: str, schema: str) -> Iterator[tuple[Worker, Client]]:
    """A worker that is prepared (schema, definitions) but never started: the test leases by hand."""
    w = Worker({"default": 8}, settings_for(database_url, schema), workflows=[grouped])
    w.prepare()
    c = Client(database_url, schema=schema)
    yield w, c
    c.close()
    w.pool.close()


def _lease(w: Worker, client: Client, n: int) -> list[Task]:
    for i in range(n):
        client.start("t_gc_grouped", {"n": i})
    with connect(w.url, w.settings.db) as conn:
        rows = conn.execute(q("lease_v3"), {"queue": "default", "limit": n, "owner": OWNER, "ttl": 30}).fetchall()
    tasks = [Task.from_lease_row(tuple(r)) for r in rows if r[0] is not None]
    assert len(tasks) == n
    return tasks


def _run_status(w: Worker, run_id: str | None) -> tuple[str, str, Any]:
    with connect(w.url, w.settings.db) as conn:
        row = conn.execute("SELECT status, current_step, context FROM executions WHERE id = %s", [run_id]).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


def _step_xids(w: Worker, run_ids: list[str | None]) -> dict[str, int]:
    with connect(w.url, w.settings.db) as conn:
        rows = conn.execute("SELECT run_id::text, xmin::text::bigint FROM steps WHERE run_id = ANY(%s::uuid[])",
                            [run_ids]).fetchall()
    return {r[0]: r[1] for r in rows}


def _checkpoints_queued_behind_a_busy_leader(w: Worker, group: GroupCommit, first: Task, rest: list[Task],
                                             contexts: dict[int, str]) -> dict[int, Any]:
    """Hold the first run's row locked so its checkpoint (the leader's) blocks; queue the rest
    behind it, then let it go. Returns each task's outcome: its new token, or the exception."""
    outcomes: dict[int, Any] = {}

    def checkpoint(task: Task) -> None:
        try:
            outcomes[task.id] = group.advance(task, step="gc_one", next_node="gc_two", next_queue="default",
                                              ctx_json=contexts.get(task.id, '{"n": 1}'),
                                              started_at=datetime.now(UTC), keep=True)
        except BaseException as exc:  # each caller's outcome is what the test checks
            outcomes[task.id] = exc

    with psycopg.connect(w.url, autocommit=False, options=f"-c search_path={w.settings.db.schema}") as blocker:
        blocker.execute("SELECT 1 FROM executions WHERE id = %s FOR UPDATE", [first.run_id])
        leader = threading.Thread(target=checkpoint, args=(first,))
        leader.start()
        # Busy with an empty queue: the leader has taken its batch (of one) and is committing it.
        wait_until(lambda: group._busy and not group._queue, what="the first checkpoint to lead")
        followers = [threading.Thread(target=checkpoint, args=(t,)) for t in rest]
        for t in followers:
            t.start()
        wait_until(lambda: len(group._queue) == len(rest), what="the other checkpoints to queue")
        blocker.rollback()
    for t in [leader, *followers]:
        t.join(10)
    return outcomes


def test_queued_checkpoints_commit_together_and_a_lost_lease_costs_only_its_own(setup: tuple[Worker, Client]
                                                                                 ) -> None:
    w, client = setup
    group = GroupCommit(w.pool, OWNER, 30)
    first, *rest = _lease(w, client, 5)
    lost = rest[-1]
    lost_token = lost.token
    lost.token = "00000000-0000-0000-0000-000000000000"  # as if its lease had expired and been re-leased

    outcomes = _checkpoints_queued_behind_a_busy_leader(w, group, first, rest, {})

    assert isinstance(outcomes[lost.id], LeaseLost)
    for task in [first, *rest[:-1]]:
        assert isinstance(outcomes[task.id], str), outcomes[task.id]
        assert _run_status(w, task.run_id)[:2] == ("running", "gc_two")
    assert _run_status(w, lost.run_id)[1] == "gc_one"  # untouched: still the real lease holder's step
    xids = _step_xids(w, [t.run_id for t in [first, *rest]])
    assert str(lost.run_id) not in xids
    batched = {xids[str(t.run_id)] for t in rest[:-1]}
    assert len(batched) == 1, "the checkpoints queued behind a busy one were not committed together"
    assert xids[str(first.run_id)] not in batched
    with connect(w.url, w.settings.db) as conn:
        # The real holder of the lost lease can still record its step.
        row = conn.execute("SELECT lease_token::text FROM tasks WHERE id = %s", [lost.id]).fetchone()
    assert row is not None and row[0] == lost_token


def test_a_checkpoint_that_fails_in_a_batch_fails_alone(setup: tuple[Worker, Client]) -> None:
    w, client = setup
    group = GroupCommit(w.pool, OWNER, 30)
    first, *rest = _lease(w, client, 4)
    bad = rest[1]

    outcomes = _checkpoints_queued_behind_a_busy_leader(w, group, first, rest, {bad.id: "{not json"})

    assert isinstance(outcomes[bad.id], psycopg.errors.InvalidTextRepresentation), outcomes[bad.id]
    assert _run_status(w, bad.run_id)[1] == "gc_one"
    for task in [first, *(t for t in rest if t is not bad)]:
        assert isinstance(outcomes[task.id], str), outcomes[task.id]
        assert _run_status(w, task.run_id) == ("running", "gc_two", {"n": 1})


# -- Client.start's group commit ----------------------------------------------------------------------


def _starts_queued_behind_a_busy_one(w: Worker, client: Client, inputs: list[dict[str, Any]],
                                    keys: list[str | None] | None = None) -> list[Any]:
    """Hold the tasks table so the first start (the leader's) blocks; queue the others behind it,
    then let it go. Returns each start's outcome, in the order of ``inputs``: its run id, or the
    exception."""
    outcomes: list[Any] = [None] * len(inputs)

    def start(i: int) -> None:
        try:
            outcomes[i] = client.start("t_gc_grouped", inputs[i], idempotency_key=keys[i] if keys else None)
        except BaseException as exc:  # each caller's outcome is what the test checks
            outcomes[i] = exc

    batch = client._starts
    with psycopg.connect(w.url, autocommit=False, options=f"-c search_path={w.settings.db.schema}") as blocker:
        blocker.execute("LOCK TABLE tasks IN SHARE MODE")  # a start's insert of its first task waits
        leader = threading.Thread(target=start, args=(0,))
        leader.start()
        wait_until(lambda: batch._busy and not batch._queue, what="the first start to lead")
        followers = []
        for i in range(1, len(inputs)):
            # One at a time: the queue's order is the batch's order for a repeated idempotency key.
            followers.append(threading.Thread(target=start, args=(i,)))
            followers[-1].start()
            wait_until(lambda i=i: len(batch._queue) == i, what=f"start {i} to queue")
        blocker.rollback()
    for t in [leader, *followers]:
        t.join(10)
    return outcomes


def _runs(w: Worker, run_ids: list[str]) -> dict[str, tuple[int, str, Any]]:
    """run id -> (the xid that created it, status, input), for those that exist."""
    with connect(w.url, w.settings.db) as conn:
        rows = conn.execute("SELECT id::text, xmin::text::bigint, status, input FROM executions "
                            "WHERE id = ANY(%s::uuid[])", [run_ids]).fetchall()
    return {r[0]: (r[1], r[2], r[3]) for r in rows}


def test_starts_queued_behind_a_busy_one_commit_together(setup: tuple[Worker, Client]) -> None:
    w, client = setup
    inputs = [{"n": i} for i in range(5)]

    run_ids = _starts_queued_behind_a_busy_one(w, client, inputs)

    assert all(isinstance(r, str) for r in run_ids), run_ids
    runs = _runs(w, run_ids)
    assert [runs[r][1:] for r in run_ids] == [("pending", i) for i in inputs]
    batched = {runs[r][0] for r in run_ids[1:]}
    assert len(batched) == 1, "the starts queued behind a busy one were not committed together"
    assert runs[run_ids[0]][0] not in batched
    with connect(w.url, w.settings.db) as conn:
        tasks = conn.execute("SELECT count(*) FROM tasks WHERE run_id = ANY(%s::uuid[]) AND kind = 'step'",
                             [run_ids]).fetchone()
    assert tasks is not None and tasks[0] == 5

    # Idempotency keys hold within a batch and across batches: a key met again returns its run.
    keyed = _starts_queued_behind_a_busy_one(w, client, [{"n": 10}, {"n": 11}, {"n": 12}, {"n": 13}, {"n": 14}],
                                             ["gc-a", "gc-b", "gc-a", "gc-b", "gc-c"])
    assert keyed[2] == keyed[0] and keyed[3] == keyed[1]
    assert len(set(keyed)) == 3
    runs = _runs(w, keyed)
    assert [runs[r][2] for r in (keyed[0], keyed[1], keyed[4])] == [{"n": 10}, {"n": 11}, {"n": 14}]


def test_a_start_that_fails_in_a_batch_fails_alone(setup: tuple[Worker, Client]) -> None:
    """A start the database refuses (here by a trigger; every check the client can make comes first)
    costs the others of its batch nothing, and leaves nothing of itself behind."""
    w, client = setup
    with connect(w.url, w.settings.db) as conn:
        conn.execute("CREATE FUNCTION t_refuse_poison() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RAISE EXCEPTION 'poisoned input refused'; END $$")
        conn.execute("CREATE TRIGGER t_refuse_poison BEFORE INSERT ON executions FOR EACH ROW "
                     "WHEN (NEW.input ? 'poison') EXECUTE FUNCTION t_refuse_poison()")
    try:
        outcomes = _starts_queued_behind_a_busy_one(w, client, [{"n": 0}, {"n": 1}, {"poison": 1}, {"n": 3}])
    finally:
        with connect(w.url, w.settings.db) as conn:
            conn.execute("DROP TRIGGER t_refuse_poison ON executions")
            conn.execute("DROP FUNCTION t_refuse_poison()")
    assert isinstance(outcomes[2], psycopg.errors.RaiseException), outcomes[2]
    assert "poisoned input refused" in str(outcomes[2])
    good = [outcomes[i] for i in (0, 1, 3)]
    assert all(isinstance(r, str) for r in good), good
    runs = _runs(w, good)
    assert [runs[r][1:] for r in good] == [("pending", {"n": i}) for i in (0, 1, 3)]
    with connect(w.url, w.settings.db) as conn:
        poisoned = conn.execute("SELECT count(*) FROM executions WHERE input ? 'poison'").fetchone()
    assert poisoned is not None and poisoned[0] == 0
