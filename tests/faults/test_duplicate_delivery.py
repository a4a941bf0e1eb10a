"""Duplicate delivery of events. A plain duplicate is a second event: it never resolves the same wait
twice and is kept in the mailbox for a later wait (DESIGN §2: events that arrive before the wait is
reached are kept). A duplicate carrying the same ``delivery_id`` (the operator retrying a
``spec.events`` entry) is a no-op returning the first outcome (DESIGN §6: delivered exactly once)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from durable import Client
from tests.faults.helpers import sql, wait_started, worker
from tests.support import wait_until


def _open_wait(client: Client, run_id: str, step: str) -> None:
    def ready() -> bool:
        run = client.get(run_id)
        return run.status == "waiting" and any(w.step == step and w.status == "open" for w in run.waits)
    wait_until(ready, timeout=20, what=f"run waiting in step {step}")


def _mailbox(url: str, schema: str, run_id: str) -> list[tuple[Any, ...]]:
    return sql(url, schema, "SELECT kind, name, payload FROM mailbox WHERE run_id = %(r)s ORDER BY id", {"r": run_id})


@pytest.mark.slow
def test_duplicate_events_resolve_a_wait_once(database_url: str, fault_schema: str, fault_client: Client,
                                              tmp_path: Path) -> None:
    c, url, schema = fault_client, database_url, fault_schema
    base = {"log": str(tmp_path / "side.log")}
    proc = worker(url, schema, tmp_path / "worker.log", name="dup")
    try:
        proc.start()
        wait_started(proc)
        plain = c.start("faults_dup", {**base, "key": "plain"})
        keyed = c.start("faults_dup", {**base, "key": "keyed", "second_timeout_s": 1, "leftover_timeout_s": 1})

        # -- the same event twice while one wait is open --------------------------------------------------
        for rid in (plain, keyed):
            _open_wait(c, rid, "first_ping")
        assert c.send_event(plain, "ping", {"n": 1}) == "delivered"
        # Sent at once: first_ping's wait is resolved already and the next wait is a second away.
        assert c.send_event(plain, "ping", {"n": 2}) == "queued"
        assert _mailbox(url, schema, plain) == [("event", "ping", {"n": 2})]

        assert c.send_event(keyed, "ping", {"n": 1}, delivery_id="ping-1") == "delivered"
        assert c.send_event(keyed, "ping", {"n": 1}, delivery_id="ping-1") == "delivered"  # the first outcome
        assert _mailbox(url, schema, keyed) == []

        # -- a duplicate to a wait_for_all that already holds that name ------------------------------------
        for rid in (plain, keyed):
            _open_wait(c, rid, "both")
        assert c.send_event(plain, "x", "x1") == "delivered"
        assert c.send_event(plain, "x", "x2") == "queued"  # the open wait already has its x
        assert _mailbox(url, schema, plain) == [("event", "x", "x2")]
        assert c.send_event(plain, "y", "y1") == "delivered"

        assert c.send_event(keyed, "x", "x1", delivery_id="x-1") == "delivered"
        assert c.send_event(keyed, "x", "x1", delivery_id="x-1") == "delivered"
        assert c.send_event(keyed, "y", "y1", delivery_id="y-1") == "delivered"
        assert _mailbox(url, schema, keyed) == []

        runs = {rid: c.wait(rid, timeout=20) for rid in (plain, keyed)}
    finally:
        proc.stop()

    for run in runs.values():
        assert run.status == "succeeded", run.error
    # The plain duplicate was kept and consumed by the next wait for that name; nothing applied twice.
    assert {k: runs[plain].result[k] for k in ("first", "second", "both", "leftover")} == {
        "first": {"n": 1}, "second": {"n": 2}, "both": {"x": "x1", "y": "y1"}, "leftover": "x2"}
    # The keyed duplicate was dropped: the later waits found nothing and timed out to their default.
    assert {k: runs[keyed].result[k] for k in ("first", "second", "both", "leftover")} == {
        "first": {"n": 1}, "second": "none", "both": {"x": "x1", "y": "y1"}, "leftover": "none"}

    # Each wait resolved exactly once, with the first delivery's value; each step recorded once.
    expected = {plain: [("first_ping", "resolved", {"n": 1}), ("second_ping", "resolved", {"n": 2}),
                        ("both", "resolved", {"x": "x1", "y": "y1"}), ("leftover", "resolved", "x2")],
                keyed: [("first_ping", "resolved", {"n": 1}), ("second_ping", "timed_out", "none"),
                        ("both", "resolved", {"x": "x1", "y": "y1"}), ("leftover", "timed_out", "none")]}
    for rid, run in runs.items():
        assert [(w.step, w.status, w.value) for w in run.waits] == expected[rid]
        assert [(s.name, s.status) for s in run.steps] == [
            (n, "succeeded") for n in ("first_ping", "pause", "second_ping", "both", "leftover")]
        assert _mailbox(url, schema, rid) == []
    assert sql(url, schema, "SELECT run_id::text, delivery_id, outcome FROM deliveries ORDER BY 1, 2") == sorted(
        [(keyed, "ping-1", "delivered"), (keyed, "x-1", "delivered"), (keyed, "y-1", "delivered")])
