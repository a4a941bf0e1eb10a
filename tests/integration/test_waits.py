"""Durable waits, events, inputs, children, cancellation and sagas against a real PostgreSQL."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable import (
    Client,
    RunNotActive,
    RunNotFound,
    Workflow,
    assign,
    schedule_at,
    sleep,
    start_child,
    wait_for_all,
    wait_for_any,
    wait_for_approval,
    wait_for_event,
    wait_for_input,
)
from tests.support import wait_until

body_runs: dict[str, int] = {}

sleeper = Workflow("t_sleep")


@sleeper.step
def nap(ctx: Any) -> Any:
    t0 = time.time()
    sleep(ctx["ms"])
    schedule_at(datetime.now(UTC) - timedelta(seconds=1))  # already past: returns at once
    return assign(ctx, woke=time.time(), first_seen=ctx.get("first_seen", t0))


def test_sleep_suspends_then_resumes(client: Client) -> None:
    started = time.time()
    run_id = client.start("t_sleep", {"ms": 400})
    wait_until(lambda: client.get(run_id).status == "waiting", what="waiting")
    run = client.wait(run_id, timeout=10)
    assert run.status == "succeeded"
    assert run.result["woke"] - started >= 0.4
    assert [w.kind for w in run.waits] == ["sleep", "sleep"]


events = Workflow("t_event")


@events.step
def waits_for_payment(ctx: Any) -> Any:
    body_runs[ctx["key"]] = body_runs.get(ctx["key"], 0) + 1
    payload = wait_for_event("paid")
    return assign(ctx, payload=payload)


def test_event_delivered_while_waiting(client: Client) -> None:
    run_id = client.start("t_event", {"key": "late"})
    wait_until(lambda: client.get(run_id).status == "waiting", what="waiting")
    run = client.get(run_id)
    assert run.waits[0].kind == "event" and run.waits[0].names == ["paid"]
    assert client.send_event(run_id, "paid", {"tx": 1}) == "delivered"
    assert client.wait(run_id, timeout=10).result["payload"] == {"tx": 1}
    # The step body ran again from its top after the wait resolved, as documented.
    assert body_runs["late"] == 2


early = Workflow("t_early_event")


@early.step
def slow_start(ctx: Any) -> Any:
    time.sleep(0.3)
    return ctx


@early.step
def then_wait(ctx: Any) -> Any:
    return assign(ctx, got=wait_for_event("ready"), inp=wait_for_input("name"))


def test_event_and_input_before_wait_are_kept(client: Client) -> None:
    run_id = client.start("t_early_event", {})
    assert client.send_event(run_id, "ready", "yes") == "queued"
    assert client.provide_input(run_id, "name", "Ada") == "queued"
    run = client.wait(run_id, timeout=10)
    assert run.status == "succeeded"
    assert run.result["got"] == "yes" and run.result["inp"] == "Ada"


multi = Workflow("t_multi_wait")


@multi.step
def several(ctx: Any) -> Any:
    name, payload = wait_for_any(["a", "b"])
    both = wait_for_all(["x", "y"])
    approval = wait_for_approval("boss", prompt="ok?")
    return assign(ctx, any=[name, payload], all=both, approval=approval)


def test_several_waits_in_one_step(client: Client) -> None:
    run_id = client.start("t_multi_wait", {})
    wait_until(lambda: client.get(run_id).status == "waiting", what="waiting")
    client.send_event(run_id, "b", 2)
    client.send_event(run_id, "y", "Y")
    wait_until(lambda: len(client.get(run_id).waits) == 2, what="second wait")
    client.send_event(run_id, "x", "X")
    wait_until(lambda: len(client.get(run_id).waits) == 3, what="approval wait")
    assert client.get(run_id).waits[2].prompt == "ok?"
    client.provide_input(run_id, "boss", "approved")
    run = client.wait(run_id, timeout=10)
    assert run.result["any"] == ["b", 2]
    assert run.result["all"] == {"x": "X", "y": "Y"}
    assert run.result["approval"] == "approved"


timeouts = Workflow("t_wait_timeouts")


@timeouts.step
def with_fallback(ctx: Any) -> Any:
    value = wait_for_event("never", timeout=200, timeout_value="fallback")
    return assign(ctx, value=value)


@timeouts.step
def without_fallback(ctx: Any) -> Any:
    wait_for_input("never", timeout=timedelta(milliseconds=200))
    return ctx


def test_wait_timeouts(client: Client) -> None:
    run = client.wait(client.start("t_wait_timeouts", {}), timeout=10)
    assert run.status == "failed"
    assert run.context["value"] == "fallback"
    assert run.error["type"] == "WaitTimeout" and run.error["step"] == "without_fallback"


parent = Workflow("t_parent")
child = Workflow("t_child")


@child.step
def child_work(ctx: Any) -> Any:
    if ctx.get("fail"):
        raise ValueError("child broke")
    return assign(ctx, doubled=ctx["n"] * 2)


@parent.step
def call_child(ctx: Any) -> Any:
    result = start_child("t_child", {"n": ctx["n"], "fail": ctx.get("fail", False)})
    detached = start_child("t_child", {"n": 0}, wait=False)
    return assign(ctx, child=result, detached=detached)


def test_child_workflow(client: Client) -> None:
    run = client.wait(client.start("t_parent", {"n": 21}), timeout=10)
    assert run.status == "succeeded", run.error
    assert run.result["child"]["doubled"] == 42
    detached = client.get(run.result["detached"])
    assert detached.parent_id == run.id


def test_child_failure_fails_parent_step(client: Client) -> None:
    run = client.wait(client.start("t_parent", {"n": 1, "fail": True}), timeout=10)
    assert run.status == "failed"
    assert run.error["type"] == "ChildWorkflowFailed" and "child broke" in run.error["message"]


def test_cancel_waiting_run(client: Client) -> None:
    run_id = client.start("t_event", {"key": "cancel"})
    wait_until(lambda: client.get(run_id).status == "waiting", what="waiting")
    assert client.cancel(run_id, "customer left") is True
    run = client.get(run_id)
    assert run.status == "cancelled" and run.error["message"] == "customer left"
    assert client.cancel(run_id) is False  # no-op on a finished run
    with pytest.raises(RunNotActive, match="already ended cancelled"):
        client.send_event(run_id, "paid", {})
    with pytest.raises(RunNotFound):
        client.send_event("00000000-0000-0000-0000-000000000000", "paid", {})


quick = Workflow("t_quick")


@quick.step
def quick_step(ctx: Any) -> Any:
    return assign(ctx, n=ctx["n"] + 10)


def test_idempotency_key(client: Client) -> None:
    a = client.start("t_quick", {"n": 1}, idempotency_key="order-77")
    b = client.start("t_quick", {"n": 2}, idempotency_key="order-77")
    assert a == b
    assert client.wait(a, timeout=10).result == {"n": 11}


def test_scheduled_at(client: Client) -> None:
    at = datetime.now(UTC) + timedelta(milliseconds=600)
    run_id = client.start("t_quick", {"n": 0}, scheduled_at=at)
    assert client.get(run_id).status == "pending"
    run = client.wait(run_id, timeout=10)
    assert run.started_at is not None and run.started_at >= at


saga = Workflow("t_saga")


@saga.step(compensate="undo_a")
def do_a(ctx: Any) -> Any:
    return assign(ctx, a=True)


@saga.step
def do_plain(ctx: Any) -> Any:
    return ctx


@saga.step(compensate="undo_b")
def do_b(ctx: Any) -> Any:
    return assign(ctx, b=True)


@saga.step
def explode(ctx: Any) -> Any:
    raise RuntimeError("charge failed")


@saga.compensation
def undo_a(ctx: Any) -> Any:
    if ctx.get("undo_fails"):
        raise RuntimeError("cannot undo a")
    return ctx


@saga.compensation
def undo_b(ctx: Any) -> Any:
    return ctx


def test_compensations_run_in_reverse_order(client: Client) -> None:
    run = client.wait(client.start("t_saga", {}), timeout=10)
    assert run.status == "compensated"
    comps = [s.name for s in run.steps if s.kind == "compensation"]
    assert comps == ["undo_b", "undo_a"]
    assert run.error["step"] == "explode"


def test_compensation_failure_fails_run(client: Client) -> None:
    run = client.wait(client.start("t_saga", {"undo_fails": True}), timeout=10)
    assert run.status == "failed"
    assert run.error["compensation"]["message"] == "cannot undo a"


def test_queues_and_priority(client: Client) -> None:
    # The "solo" queue has concurrency 1: with a slow run holding it, a high-priority run is
    # taken before a low-priority one that was enqueued first.
    blocker = client.start("t_slow_solo", {}, queue="solo")
    wait_until(lambda: client.get(blocker).status == "running", what="blocker running")
    low = client.start("t_quick", {"n": 1}, queue="solo", priority=0)
    high = client.start("t_quick", {"n": 1}, queue="solo", priority=10)
    runs = [client.wait(r, timeout=10) for r in (blocker, low, high)]
    assert all(r.status == "succeeded" for r in runs)
    assert runs[2].started_at < runs[1].started_at  # type: ignore[operator]


slow_solo = Workflow("t_slow_solo")


@slow_solo.step
def hold(ctx: Any) -> Any:
    time.sleep(0.4)
    return ctx


def test_delivery_id_makes_delivery_idempotent(client: Client) -> None:
    run_id = client.start("t_multi_wait", {})
    wait_until(lambda: client.get(run_id).status == "waiting", what="waiting")
    assert client.send_event(run_id, "a", 1, delivery_id="evt-1") == "delivered"
    # A retried delivery (same id) changes nothing: the next wait (wait_for_all x, y) stays open.
    first = client.send_event(run_id, "x", "first", delivery_id="evt-2")
    assert client.send_event(run_id, "x", "again", delivery_id="evt-2") == first
    wait_until(lambda: len(client.get(run_id).waits) == 2, what="second wait")
    client.send_event(run_id, "y", "Y", delivery_id="evt-3")
    wait_until(lambda: len(client.get(run_id).waits) == 3, what="approval wait")
    client.provide_input(run_id, "boss", "approved", delivery_id="in-1")
    assert client.provide_input(run_id, "boss", "approved", delivery_id="in-1") == "delivered"
    run = client.wait(run_id, timeout=10)
    assert run.result["all"] == {"x": "first", "y": "Y"}


two_ticks = Workflow("t_two_ticks")


@two_ticks.step
def tick_twice(ctx: Any) -> Any:
    return assign(ctx, ticks=[wait_for_event("tick"), wait_for_event("tick")])


def test_repeated_delivery_id_is_not_a_second_event(client: Client) -> None:
    run_id = client.start("t_two_ticks", {})
    for _ in range(3):
        client.send_event(run_id, "tick", 1, delivery_id="tick-1")
    time.sleep(0.3)
    assert client.get(run_id).status == "waiting"  # still waiting for the second, distinct tick
    client.send_event(run_id, "tick", 2, delivery_id="tick-2")
    assert client.wait(run_id, timeout=10).result["ticks"] == [1, 2]


def test_redeploy_resumes_by_step_name_or_fails_naming_the_missing_step(client: Client) -> None:
    from durable.dsl import REGISTRY

    def define(*names: str) -> Workflow:
        wf = Workflow("t_versioned")
        for name in names:
            if name == "gate":
                wf.step(name=name)(lambda ctx: assign(ctx, got=wait_for_event("go")))
            else:
                wf.step(name=name)(lambda ctx, n=name: assign(ctx, path=[*ctx.get("path", []), n]))
        return wf

    try:
        define("gate", "old_next")
        kept = client.start("t_versioned", {})
        removed = client.start("t_versioned", {})
        for run_id in (kept, removed):
            wait_until(lambda r=run_id: client.get(r).status == "waiting", what="waiting")
        define("gate", "new_next")  # a redeploy that keeps the step the runs wait in
        client.send_event(kept, "go", 1)
        run = client.wait(kept, timeout=10)
        assert run.status == "succeeded" and run.result["path"] == ["new_next"]
        define("renamed_gate", "new_next")  # a redeploy that drops it
        client.send_event(removed, "go", 1)
        run = client.wait(removed, timeout=10)
        assert run.status == "failed"
        assert "step 'gate' no longer exists in workflow 't_versioned'" in run.error["message"]
    finally:
        REGISTRY.remove("t_versioned")


member_waits = Workflow("t_parallel_member_waits")
member_entries: dict[str, int] = {}


@member_waits.step
def mw_init(ctx: Any) -> Any:
    return ctx


with member_waits.parallel(max_concurrency=2) as mw:

    @mw.step
    def mw_waiter(ctx: Any) -> Any:
        member_entries[ctx["tag"]] = member_entries.get(ctx["tag"], 0) + 1
        return {"got": wait_for_event("go")}

    @mw.step
    def mw_quick(ctx: Any) -> Any:
        return {"quick": True}

    @mw.step
    def mw_third(ctx: Any) -> Any:
        return {"third": True}


@member_waits.step
def mw_done(ctx: Any) -> Any:
    return assign(ctx, results=ctx["__results__"])


def test_a_member_waiting_without_a_timer_is_not_started_again(client: Client) -> None:
    """A member parked on a wait with no timeout has no task row; the others finishing must neither
    start it again (its code before the wait would re-run) nor count it as finished."""
    tag = f"mw-{time.time_ns()}"
    run_id = client.start("t_parallel_member_waits", {"tag": tag})
    wait_until(lambda: any(w.status == "open" for w in client.get(run_id).waits), what="the member's wait")
    wait_until(lambda: {s.name for s in client.get(run_id).steps} >= {"mw_quick", "mw_third"},
               what="the other members to finish")
    time.sleep(0.5)  # time for a wrongly re-inserted member to run
    assert member_entries[tag] == 1
    assert client.get(run_id).status == "waiting"
    client.send_event(run_id, "go", {"n": 7})
    run = client.wait(run_id, timeout=10)
    assert run.status == "succeeded", run.error
    assert run.result["results"]["mw_waiter"] == ["ok", {"got": {"n": 7}}]
    assert member_entries[tag] == 2  # entered once, resumed once
