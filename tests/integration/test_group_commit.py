"""Group commit of step checkpoints: concurrent checkpoints share one transaction, never one fate."""

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
        rows = conn.execute(q("lease_v1"), {"queue": "default", "limit": n, "owner": OWNER, "ttl": 30}).fetchall()
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
