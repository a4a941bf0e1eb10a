"""Push dispatch (migration 0012): a start leases its run to a worker slot offered in
``dispatch_slots`` and the task travels in the ``durable_push`` notification, so the worker runs
the first step without a dispatch round."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from prometheus_client import REGISTRY

from durable import Client, Workflow, assign
from durable.db import connect, q
from durable.worker import Worker
from tests.support import record_rounds, settings_for, wait_until

pushed = Workflow("t_push", queue="push_q")


@pushed.step
def push_one(input: Any) -> Any:
    return {"n": input["n"] + 1, "size": len(input.get("blob", ""))}


@pushed.step
def push_two(ctx: Any) -> Any:
    return assign(ctx, n=ctx["n"] + 1)


SLOTS = 3


@pytest.fixture(scope="module")
def push_worker(database_url: str, schema: str) -> Iterator[Worker]:
    # Polls far apart: a poll's round takes the offers back for a moment, which these tests would see.
    w = Worker({"push_q": SLOTS}, settings_for(database_url, schema, poll_max_ms=60_000), workflows=[pushed])
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def push_client(database_url: str, schema: str, push_worker: Worker) -> Iterator[Client]:
    c = Client(database_url, schema=schema)
    yield c
    c.close()


def _sql(url: str, schema: str, query: str, params: Any = None) -> list[tuple[Any, ...]]:
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        cur = conn.execute(query, params)
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


def _offered(url: str, schema: str, owner: str) -> int:
    return int(_sql(url, schema, "SELECT count(*) FROM dispatch_slots WHERE owner = %s AND free", [owner])[0][0])


def _pushed(outcome: str) -> float:
    return REGISTRY.get_sample_value("durable_worker_pushed_runs_total",
                                     {"queue": "push_q", "outcome": outcome}) or 0.0


def test_a_new_run_is_pushed_to_a_free_slot_and_runs_without_a_dispatch_round(
        push_client: Client, push_worker: Worker, database_url: str, schema: str, monkeypatch: Any) -> None:
    push_client.wait(push_client.start("t_push", {"n": 0}), timeout=10)
    wait_until(lambda: _offered(database_url, schema, push_worker.owner) == SLOTS, what="every slot offered")
    rounds = record_rounds(push_worker, monkeypatch)
    taken = _pushed("taken")
    for n in range(5):
        run = push_client.wait(push_client.start("t_push", {"n": n}), timeout=10)
        assert run.result == {"n": n + 2, "size": 0}
        # Created running, by its start: the start leased it.
        [(created, started)] = _sql(database_url, schema, "SELECT created_at, started_at FROM executions "
                                    "WHERE id = %s", [run.id])
        assert started == created
    assert rounds == [], "a pushed run needed a dispatch round"
    assert _pushed("taken") == taken + 5  # and the worker's metrics count them


def test_the_last_checkpoint_offers_the_slot_before_the_run_is_seen_finished(
        push_client: Client, push_worker: Worker, database_url: str, schema: str, monkeypatch: Any) -> None:
    """So a client starting its next run as soon as one finishes finds a slot to push it to."""
    wait_until(lambda: _offered(database_url, schema, push_worker.owner) == SLOTS, what="every slot offered")
    # Only the checkpoint may offer: not the worker once the chain is over, which comes too late.
    monkeypatch.setattr(push_worker, "_offer", lambda conn, slots: push_worker.book.unreserve(slots))
    for n in range(5):
        push_client.wait(push_client.start("t_push", {"n": n}), timeout=10)
        # No waiting: the offer committed with the finish that wait saw.
        assert _offered(database_url, schema, push_worker.owner) == SLOTS


def test_an_input_too_big_for_the_notification_is_read_by_the_worker(push_client: Client,
                                                                       push_worker: Worker) -> None:
    blob = "x" * 12_000  # a notification holds under 8000 bytes
    run = push_client.wait(push_client.start("t_push", {"n": 1, "blob": blob}), timeout=10)
    assert run.status == "succeeded" and run.result["size"] == len(blob) and run.result["n"] == 3


def test_a_start_pushes_only_to_a_live_worker_and_says_what_to_run(
        push_client: Client, push_worker: Worker, database_url: str, schema: str) -> None:
    """Offers of a worker whose heartbeat is stale are passed over; a live one gets the task in full."""
    settings = settings_for(database_url, schema)
    with connect(database_url, settings.db) as conn, psycopg.connect(database_url, autocommit=True) as listener:
        conn.execute("INSERT INTO queues (name) VALUES ('push_other') ON CONFLICT DO NOTHING")
        listener.execute("LISTEN durable_push")
        for owner, alive in (("t-stale", -1.0), ("t-live", 30.0)):
            conn.execute(q("register_slots"), {"owner": owner, "slots": [0], "queues": ["push_other"],
                                               "lease_seconds": 7, "alive": alive})
            conn.execute(q("offer_slots"), {"owner": owner, "slots": [0], "free": True})
        try:
            run_id = push_client.start("t_push", {"n": 41}, queue="push_other")
            [(status, owner, token, tid, ttl)] = _sql(
                database_url, schema, "SELECT e.status, t.lease_owner, t.lease_token, t.id, "
                "extract(epoch FROM t.lease_expires_at - e.created_at) FROM executions e "
                "JOIN tasks t ON t.run_id = e.id WHERE e.id = %s", [run_id])
            assert (status, owner) == ("running", "t-live") and 6.5 < float(ttl) <= 7.0
            [note] = [n for n in listener.notifies(timeout=5, stop_after=1)]
            target, _, body = note.payload.partition(" ")
            slot, task_id, sent_token, sent_run, workflow, step, queue, priority, deadline, input_, inline = \
                json.loads(body)
            assert (target, slot, task_id, sent_token, sent_run) == ("t-live", 0, tid, str(token), run_id)
            assert (workflow, step, queue, priority, deadline, input_, inline) == \
                ("t_push", "push_one", "push_other", 0, None, {"n": 41}, True)
            assert _offered(database_url, schema, "t-live") == 0  # taken
            assert _offered(database_url, schema, "t-stale") == 1  # passed over, left as it was

            # The only live slot is taken: the next run waits in its queue, as before push dispatch.
            later = push_client.start("t_push", {"n": 1}, queue="push_other")
            assert push_client.get(later).status == "pending"
        finally:
            conn.execute("DELETE FROM dispatch_workers WHERE owner IN ('t-stale', 't-live')")
            conn.execute("DELETE FROM executions WHERE queue = 'push_other'")


def test_a_leaving_worker_hands_back_what_was_pushed_to_it_unseen(
        push_client: Client, push_worker: Worker, database_url: str, schema: str) -> None:
    """Unregistering releases the tasks pushed to the worker that it never received, and wakes their
    queue: a live worker runs them at once instead of after their lease expires."""
    settings = settings_for(database_url, schema)
    owner = f"t-leaving-{uuid.uuid4().hex[:6]}"
    with connect(database_url, settings.db) as conn, psycopg.connect(database_url, autocommit=True) as listener:
        conn.execute(q("register_slots"), {"owner": owner, "slots": [0, 1], "queues": ["push_q", "push_q"],
                                           "lease_seconds": 600, "alive": 30})
        conn.execute(q("offer_slots"), {"owner": owner, "slots": [0, 1], "free": True})
        # The real worker's slots are busy or not: take its offers back so ours are the only ones.
        with push_worker._round, push_worker.pool.connection() as wconn:
            push_worker._withdraw(wconn, None)
            run_ids = [push_client.start("t_push", {"n": n}) for n in (10, 20)]
            owners = _sql(database_url, schema, "SELECT lease_owner FROM tasks WHERE run_id = ANY(%s::uuid[])",
                          [run_ids])
            assert owners == [(owner,), (owner,)]
            [(received, kept)] = _sql(database_url, schema, "SELECT d.task_id, t.run_id::text FROM dispatch_slots d "
                                      "JOIN tasks t ON t.id = d.task_id WHERE d.owner = %s AND d.slot = 0", [owner])
            [released] = [r for r in run_ids if r != kept]
            listener.execute("LISTEN durable_tasks")
            conn.execute(q("unregister_slots"), {"owner": owner, "received": [received]})
            assert [n.payload for n in listener.notifies(timeout=5, stop_after=1)] == ["push_q"]
            assert _sql(database_url, schema, "SELECT count(*) FROM dispatch_workers WHERE owner = %s",
                        [owner]) == [(0,)]
            # The received one stays leased to the leaver (it runs it); the other is back in the queue.
            assert _sql(database_url, schema, "SELECT lease_owner FROM tasks WHERE run_id = %s", [kept]) == [(owner,)]
            assert _sql(database_url, schema, "SELECT lease_owner FROM tasks WHERE run_id = %s",
                        [released]) == [(None,)]
        assert push_client.wait(released, timeout=10).status == "succeeded"
        conn.execute("DELETE FROM executions WHERE id = %s", [kept])


def test_a_push_lost_with_the_listen_connection_is_adopted_on_reconnect(
        push_client: Client, push_worker: Worker, database_url: str, schema: str, monkeypatch: Any) -> None:
    """The worker's LISTEN connection breaks and a push sent meanwhile is lost: on reconnecting, the
    worker takes its offers back and finds the task pushed to it in the database."""
    wait_until(lambda: _offered(database_url, schema, push_worker.owner) == SLOTS, what="every slot offered")
    lost = threading.Event()
    original = push_worker._on_push

    def losing(body: str) -> None:
        if not lost.is_set():
            lost.set()  # dropped, as if the connection had broken before it arrived
            return
        original(body)

    monkeypatch.setattr(push_worker, "_on_push", losing)
    adopted = _pushed("adopted")
    run_id = push_client.start("t_push", {"n": 100})
    assert lost.wait(5)
    assert push_client.get(run_id).status == "running"  # leased to us, unseen
    with psycopg.connect(database_url, autocommit=True) as admin:
        assert admin.execute("SELECT pg_terminate_backend(%s)", [push_worker.listen_pid]).fetchone() == (True,)
    # The lease lasts 5 s in these tests: finishing well inside it means the worker adopted the task.
    run = push_client.wait(run_id, timeout=3)
    assert run.result == {"n": 102, "size": 0}
    assert _pushed("adopted") == adopted + 1


held = Workflow("t_push_held", queue="race_q")
_held_in = threading.Event()
_held_go = threading.Event()


@held.step
def push_held(input: Any) -> Any:
    if input.get("hold"):
        _held_in.set()
        _held_go.wait(20)
    return input


def test_a_slot_freed_during_a_round_that_left_tasks_waiting_sends_the_next_round_at_once(
        database_url: str, schema: str, monkeypatch: Any) -> None:
    """The slot saw no starved queue, so it offered itself; the round, which left tasks waiting, must
    look again at once rather than leave them behind new runs until the next poll."""
    w = Worker({"race_q": 2}, settings_for(database_url, schema, poll_max_ms=60_000), workflows=[held])
    w.start()
    c = Client(database_url, schema=schema)
    try:
        wait_until(lambda: _offered(database_url, schema, w.owner) == 2, what="both slots offered")
        held_run = c.start("t_push_held", {"hold": True})
        assert _held_in.wait(10)
        [held_slot] = [s for s in w.book.queue_of if w.book.state(s) == "busy"]
        with w._round:
            with w.pool.connection() as conn:
                w._withdraw(conn, None)  # the other slot is the rounds' now: both starts wait in the queue
            waiting = [c.start("t_push_held", {"n": n}) for n in range(2)]
            original = w._submit

            def submit_then_free_the_held_slot(slot: int, task: Any, load_context: bool = False) -> None:
                original(slot, task, load_context)
                _held_go.set()
                wait_until(lambda: w.book.state(held_slot) == "offered", what="the held slot offered again")

            monkeypatch.setattr(w, "_submit", submit_then_free_the_held_slot)
            assert w._lease_round() == 0.0
            monkeypatch.undo()
        for run_id in [held_run, *waiting]:
            assert c.wait(run_id, timeout=10).status == "succeeded"
    finally:
        _held_go.set()
        c.close()
        w.stop()
