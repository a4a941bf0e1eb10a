"""The few round trips a run costs: Client.wait, Client.get and the worker's lease round."""

from __future__ import annotations

import threading
import uuid
from datetime import datetime
from typing import Any

import psycopg
import pytest

from durable import Client, NonRetryableError, Workflow, assign, sleep
from durable.client import _RunWatcher
from durable.db import connect, q
from durable.worker import Worker
from tests.support import record_rounds, settings_for, wait_until

quick = Workflow("t_rt_quick")


@quick.step
def rt_one(input: Any) -> Any:
    return {"n": input["n"] + 1}


@quick.step
def rt_two(ctx: Any) -> Any:
    return assign(ctx, n=ctx["n"] + 1)


bulky = Workflow("t_rt_bulky")


@bulky.step
def rt_bulky(input: Any) -> Any:
    return {"blob": "x" * input["size"]}


failing = Workflow("t_rt_fails")


@failing.step
def rt_fails(input: Any) -> Any:
    raise NonRetryableError(f"no {input['what']}")


napping = Workflow("t_rt_nap")


@napping.step
def rt_nap(input: Any) -> Any:
    sleep(50)
    return {"slept": True}


held = Workflow("t_rt_held")
_held_entered = threading.Event()
_held_release = threading.Event()


@held.step
def rt_held(input: Any) -> Any:
    _held_entered.set()
    _held_release.wait(20)
    return input


def _status(database_url: str, schema: str, run_id: str) -> str:
    with psycopg.connect(database_url, autocommit=True, options=f"-c search_path={schema}") as conn:
        row = conn.execute("SELECT status FROM executions WHERE id = %s", [run_id]).fetchone()
    return str(row[0]) if row else ""


def test_wait_on_a_run_that_finished_before_wait_is_prompt(client: Client, database_url: str,
                                                           schema: str, monkeypatch: Any) -> None:
    client.wait(client.start("t_rt_quick", {"n": 0}), timeout=10)  # the client now listens
    run_id = client.start("t_rt_quick", {"n": 1})
    wait_until(lambda: _status(database_url, schema, run_id) == "succeeded", what="the run to finish")

    def no_status(run_id: str) -> str:
        raise AssertionError("the finish was announced before anyone waited: it must be remembered, "
                             "not found by the once-a-second re-check")

    monkeypatch.setattr(client, "_status", no_status)
    run = client.wait(run_id, timeout=10)
    assert run.status == "succeeded" and run.result == {"n": 3}


def _no_reads(client: Client, monkeypatch: Any) -> None:
    def no_status(run_id: str) -> str:
        raise AssertionError("the watcher already knows whether this run has finished")

    def no_get(run_id: str) -> Any:
        raise AssertionError("the finish notification carried the finished run")

    monkeypatch.setattr(client, "_status", no_status)
    monkeypatch.setattr(client, "get", no_get)


def test_wait_for_a_run_this_client_started_asks_nothing(client: Client, monkeypatch: Any) -> None:
    """The run's finish notification carries the finished run: waiting costs no query at all, for a run
    that succeeds or fails, whether it finishes before or after the wait begins."""
    client.wait(client.start("t_rt_quick", {"n": 0}), timeout=10)  # the client now listens
    run_ids = [client.start("t_rt_quick", {"n": n}) for n in range(5)]
    failed_id = client.start("t_rt_fails", {"what": "luck"})
    expected = {run_id: client.get(run_id) for run_id in [*run_ids, failed_id]
                if client.wait(run_id, timeout=10).finished}  # what a read of each finished run says
    _no_reads(client, monkeypatch)
    for n in range(5):
        assert client.wait(client.start("t_rt_quick", {"n": n}), timeout=10).result == {"n": n + 2}
    failed = client.wait(client.start("t_rt_fails", {"what": "luck"}), timeout=10)
    assert failed.status == "failed" and failed.error and failed.error["message"] == "no luck"
    assert [s.status for s in failed.steps] == ["failed"]
    monkeypatch.undo()
    for run_id, run in expected.items():
        assert client.wait(run_id, timeout=10) == run  # read again: the same as the notification's


def test_a_run_too_big_for_its_notification_is_read(client: Client, monkeypatch: Any) -> None:
    """PostgreSQL caps a notification at 8000 bytes: a bigger finished run announces only its id, and
    wait reads it; records kept for later waits stay within their budget."""
    client.wait(client.start("t_rt_quick", {"n": 0}), timeout=10)
    reads: list[str] = []
    original = client.get

    def counting_get(run_id: str) -> Any:
        reads.append(run_id)
        return original(run_id)

    monkeypatch.setattr(client, "get", counting_get)
    small = client.wait(client.start("t_rt_bulky", {"size": 10}), timeout=10)
    big_id = client.start("t_rt_bulky", {"size": 9000})
    big = client.wait(big_id, timeout=10)
    assert small.result == {"blob": "x" * 10} and big.result == {"blob": "x" * 9000}
    assert reads == [big_id]

    monkeypatch.setattr(_RunWatcher, "_KEPT_BYTES_MAX", 600)  # room for about one small run's record
    reads.clear()
    run_ids = [client.start("t_rt_bulky", {"size": 10}) for _ in range(4)]
    watcher = client._watcher
    assert watcher is not None
    wait_until(lambda: all(r in watcher._finished for r in run_ids), what="the runs to finish")
    assert 0 < watcher._kept_bytes <= 600
    assert [client.wait(r, timeout=10).result for r in run_ids] == [{"blob": "x" * 10}] * 4
    assert 1 <= len(reads) <= 3  # the records past the budget were read instead
    assert watcher._kept_bytes == 0 and not watcher._records


def test_wait_on_a_run_started_elsewhere(client: Client, database_url: str, schema: str) -> None:
    other = Client(database_url, schema=schema)
    try:
        run_id = other.start("t_rt_quick", {"n": 5})
        assert client.wait(run_id, timeout=10).result == {"n": 7}
        wait_until(lambda: _status(database_url, schema, run_id) == "succeeded", what="the run to finish")
        assert client.wait(run_id, timeout=10).status == "succeeded"  # already finished: read, not awaited
    finally:
        other.close()


def test_idempotent_start_returns_the_existing_run_to_wait_for(client: Client) -> None:
    client.wait(client.start("t_rt_quick", {"n": 0}), timeout=10)
    key = f"rt-{uuid.uuid4()}"
    first = client.start("t_rt_quick", {"n": 10}, idempotency_key=key)
    again = client.start("t_rt_quick", {"n": 99}, idempotency_key=key)
    assert again == first
    assert client.wait(again, timeout=10).result == {"n": 12}


def test_get_reads_steps_and_waits_in_one_statement(client: Client) -> None:
    run = client.wait(client.start("t_rt_nap", {}), timeout=10)
    assert run.status == "succeeded"
    assert [s.name for s in run.steps] == ["rt_nap"]
    step = run.steps[0]
    assert isinstance(step.started_at, datetime) and step.started_at.tzinfo is not None
    assert step.finished_at >= step.started_at and step.output == {"slept": True}
    [wait] = run.waits
    assert wait.kind == "sleep" and wait.status == "timed_out" and isinstance(wait.names, list)
    assert isinstance(wait.until, datetime) and wait.until.tzinfo is not None
    assert isinstance(wait.created_at, datetime)
    assert client.get(run.id) == run


def test_lease_round_reports_a_drained_queue_and_its_next_due_task(database_url: str, schema: str,
                                                                    worker: Worker) -> None:
    settings = settings_for(database_url, schema)
    with connect(database_url, settings.db) as conn:
        conn.execute("INSERT INTO queues (name) VALUES ('rt_timers') ON CONFLICT DO NOTHING")
        rows = conn.execute(q("lease_v3"), {"queue": "rt_timers", "limit": 2, "owner": "t", "ttl": 5}).fetchall()
        # Nothing to lease: one marker row (id NULL) and no due task at all.
        assert [(r[0], r[-1]) for r in rows] == [(None, None)]
        conn.execute("INSERT INTO tasks (kind, schedule_name, queue, due_at) "
                     "VALUES ('cron', 'rt-nothing', 'rt_timers', now() + interval '3 seconds')")
        try:
            rows = conn.execute(q("lease_v3"), {"queue": "rt_timers", "limit": 2, "owner": "t",
                                                "ttl": 5}).fetchall()
            [(task_id, next_due)] = [(r[0], r[-1]) for r in rows]
            assert task_id is None and 2.0 < next_due <= 3.0
        finally:
            conn.execute("DELETE FROM tasks WHERE schedule_name = 'rt-nothing'")


def test_the_next_due_task_is_reported_across_priorities(database_url: str, schema: str, worker: Worker) -> None:
    """The drained marker looks at every priority, whether the round drained the queue or filled its slots."""
    settings = settings_for(database_url, schema)
    with connect(database_url, settings.db) as conn:
        conn.execute("INSERT INTO queues (name) VALUES ('rt_prios') ON CONFLICT DO NOTHING")
        for name, priority, due in (("rt-p5", 5, "3 seconds"), ("rt-p1", 1, "2 seconds")):
            conn.execute("INSERT INTO tasks (kind, schedule_name, queue, priority, due_at) "
                         "VALUES ('cron', %s, 'rt_prios', %s, now() + %s::interval)", (name, priority, due))
        try:
            rows = conn.execute(q("lease_v3"), {"queue": "rt_prios", "limit": 2, "owner": "t", "ttl": 5}).fetchall()
            [(task_id, next_due)] = [(r[0], r[-1]) for r in rows]
            assert task_id is None and 1.0 < next_due <= 2.0
            conn.execute("INSERT INTO tasks (kind, schedule_name, queue, priority, due_at) "
                         "VALUES ('cron', 'rt-p3', 'rt_prios', 3, now())")
            rows = conn.execute(q("lease_v3"), {"queue": "rt_prios", "limit": 1, "owner": "t", "ttl": 5}).fetchall()
            assert [r[4] for r in rows if r[0] is not None] == ["rt-p3"]  # every slot filled; nothing else ready
            [next_due] = [r[-1] for r in rows if r[0] is None]
            assert 1.0 < next_due <= 2.0, next_due  # priority 1 was not reached by the pick, yet counts
        finally:
            conn.execute("DELETE FROM tasks WHERE queue = 'rt_prios'")


def test_a_lease_round_does_not_walk_a_queue_of_sleeping_tasks(database_url: str, schema: str,
                                                                worker: Worker) -> None:
    """Thousands of sleeping runs in a queue: a dispatch round that finds nothing ready reads a few index
    entries (one range per priority), not every task of the queue (counted by PostgreSQL's statistics)."""
    settings = settings_for(database_url, schema)

    def tuples_read(conn: psycopg.Connection[Any]) -> int:
        conn.execute("SELECT pg_stat_force_next_flush()")  # this backend's counts, flushed when it idles
        row = conn.execute("SELECT coalesce(idx_tup_fetch, 0) + coalesce(seq_tup_read, 0) "
                           "FROM pg_stat_user_tables WHERE schemaname = %s AND relname = 'tasks'", [schema]).fetchone()
        assert row is not None
        return int(row[0])

    with connect(database_url, settings.db) as conn:
        conn.execute("INSERT INTO queues (name) VALUES ('rt_sleepy') ON CONFLICT DO NOTHING")
        conn.execute("INSERT INTO tasks (kind, schedule_name, queue, priority, due_at) "
                     "SELECT 'cron', 'rt-sleepy-' || i, 'rt_sleepy', i % 3, now() + make_interval(secs => 60 + i) "
                     "FROM generate_series(1, 3000) AS i")
        conn.execute("ANALYZE tasks")
        try:
            for _ in range(3):  # past the plan cache's first custom plans
                conn.execute(q("lease_v3"), {"queue": "rt_sleepy", "limit": 4, "owner": "t", "ttl": 5}).fetchall()
            before = tuples_read(conn)
            rows = conn.execute(q("lease_v3"), {"queue": "rt_sleepy", "limit": 4, "owner": "t", "ttl": 5}).fetchall()
            read = tuples_read(conn) - before
            [(task_id, next_due)] = [(r[0], r[-1]) for r in rows]
            assert task_id is None and 60.0 < next_due <= 61.5  # the earliest sleeper, whatever its priority
            assert read < 100, f"one dispatch round read {read} task rows of a queue of 3,000 sleeping ones"
        finally:
            conn.execute("DELETE FROM tasks WHERE queue = 'rt_sleepy'")


def _no_offers(worker: Worker, monkeypatch: Any) -> None:
    """Starts find no offered slot (migration 0012), as with workers of earlier releases or every slot
    busy: each new run waits in its queue and announces itself, and a lease round takes it."""
    monkeypatch.setattr(worker, "_offer", lambda conn, slots: worker.book.unreserve(slots))
    monkeypatch.setattr(worker.executor, "offer_at_end", lambda task: None)
    with worker._round, worker.pool.connection() as conn:
        worker._withdraw(conn, None)


def test_an_announced_task_is_leased_on_the_listen_thread(client: Client, worker: Worker, monkeypatch: Any) -> None:
    """A new run's notification leads straight to a lease round on the thread that received it, without
    waking the dispatcher thread first (one thread hand-off fewer per run)."""
    _no_offers(worker, monkeypatch)
    threads = record_rounds(worker, monkeypatch)
    for n in range(3):
        assert client.wait(client.start("t_rt_quick", {"n": n}), timeout=10).result == {"n": n + 2}
    assert "durable-listen" in threads, threads


def test_a_round_that_fills_every_free_slot_says_whether_more_are_ready(database_url: str, schema: str,
                                                                          worker: Worker) -> None:
    """Filling every free slot ends the round drained when nothing else is ready (so a slot that frees
    up later sends no round to find nothing), and not drained when more tasks wait."""
    settings = settings_for(database_url, schema)

    def lease(conn: psycopg.Connection[Any], limit: int) -> tuple[int, bool]:
        rows = conn.execute(q("lease_v3"), {"queue": "rt_full", "limit": limit, "owner": "t", "ttl": 5}).fetchall()
        return sum(1 for r in rows if r[0] is not None), any(r[0] is None for r in rows)

    with connect(database_url, settings.db) as conn:
        conn.execute("INSERT INTO queues (name) VALUES ('rt_full') ON CONFLICT DO NOTHING")
        add = ("INSERT INTO tasks (kind, schedule_name, queue, priority, due_at) "
               "SELECT 'cron', 'rt-full-' || %(tag)s || i, 'rt_full', i %% 2, now() "
               "FROM generate_series(1, %(n)s) AS i")
        try:
            conn.execute(add, {"tag": "a", "n": 2})
            assert lease(conn, 2) == (2, True)  # both taken, nothing left: drained
            conn.execute(add, {"tag": "b", "n": 3})
            assert lease(conn, 2) == (2, False)  # one more is ready: a freed slot must look again
            assert lease(conn, 2) == (1, True)
        finally:
            conn.execute("DELETE FROM tasks WHERE queue = 'rt_full'")


def test_a_run_set_running_by_a_lease_is_announced_while_its_first_step_runs(
        database_url: str, schema: str, client: Client, worker: Worker, monkeypatch: Any) -> None:
    """The lease round does not notify (migration 0010); the worker announces the run apart."""
    _no_offers(worker, monkeypatch)
    with psycopg.connect(database_url, autocommit=True) as listener:
        listener.execute("LISTEN durable_runs")
        run_id = client.start("t_rt_held", {"n": 1})
        try:
            assert _held_entered.wait(10), "the first step never started"
            statuses = []  # the start's own notification, then the announcement
            for n in listener.notifies(timeout=5):
                if n.payload == run_id:
                    statuses.append(_status(database_url, schema, run_id))
                    if len(statuses) == 2:
                        break
            assert statuses == ["running", "running"], statuses
        finally:
            _held_release.set()
    assert client.wait(run_id, timeout=10).result == {"n": 1}


def test_a_lease_round_commits_no_notification(database_url: str, schema: str, worker: Worker) -> None:
    with connect(database_url, settings_for(database_url, schema).db) as conn, \
            psycopg.connect(database_url, autocommit=True) as listener:
        conn.execute("INSERT INTO queues (name) VALUES ('rt_silent') ON CONFLICT DO NOTHING")
        listener.execute("LISTEN durable_runs")
        with conn.transaction():
            conn.execute(q("start_v1"), {"id": str(uuid.uuid4()), "workflow": "t_rt_quick", "hash": quick.graph.hash,
                                         "queue": "rt_silent", "priority": 0, "input": "{}", "first_step": "rt_one",
                                         "idempotency_key": None, "parent_id": None, "parent_step": None,
                                         "parent_wait_idx": None, "scheduled_at": None, "deadline": None})
        assert len(list(listener.notifies(timeout=2, stop_after=1))) == 1  # the start's
        rows = conn.execute(q("lease_v3"), {"queue": "rt_silent", "limit": 2, "owner": "t", "ttl": 5}).fetchall()
        assert [r[15] for r in rows if r[0] is not None] == [True]  # it did set the run running
        assert list(listener.notifies(timeout=0.5)) == []


def test_list_filters_by_status_newest_first(client: Client) -> None:
    """Without an index on status (migration 0011) the filter walks runs newest first."""
    failed = [client.start("t_rt_fails", {"what": f"luck {i}"}) for i in range(3)]
    done = client.start("t_rt_quick", {"n": 1})
    for run_id in [*failed, done]:
        client.wait(run_id, timeout=10)
    listed = client.list(workflow="t_rt_fails", status="failed", limit=2)
    assert [r.id for r in listed] == failed[:0:-1]
    assert all(r.status == "failed" for r in listed)
    assert done in [r.id for r in client.list(status="succeeded", limit=1000)]
    assert done not in [r.id for r in client.list(status="failed", limit=1000)]
    with pytest.raises(ValueError, match="sleeping"):
        client.list(status="sleeping")
