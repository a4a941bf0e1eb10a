"""Pipelines, retries, timeouts, branches and parallel blocks against a real PostgreSQL."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import pytest

from durable import (
    Client,
    NonRetryableError,
    Retry,
    Workflow,
    assign,
    increment,
    seconds,
)

attempts: dict[str, int] = {}

seq = Workflow("t_sequential")


@seq.step
def first(input: Any) -> Any:
    return {"n": input["n"]}


@seq.step
async def second(ctx: Any) -> Any:
    await asyncio.sleep(0)
    return increment(ctx, "n", 10)


@seq.step
def third(ctx: Any) -> None:
    return None  # keeps the context unchanged


def test_sequential_sync_and_async_steps(client: Client) -> None:
    run = client.wait(client.start("t_sequential", {"n": 1}), timeout=10)
    assert run.status == "succeeded"
    assert run.result == {"n": 11}
    assert [s.name for s in run.steps] == ["first", "second", "third"]
    assert run.progress == "3/3"
    assert uuid.UUID(str(run.id)).version == 7  # time-ordered run ids (durable.ids)


flaky = Workflow("t_flaky")


@flaky.step(retry=Retry(max_attempts=3, backoff="constant", base=20, jitter=False))
def sometimes(ctx: Any) -> Any:
    key = ctx["key"]
    attempts[key] = attempts.get(key, 0) + 1
    if attempts[key] < ctx["succeed_on"]:
        raise ConnectionError(f"attempt {attempts[key]} failed")
    return assign(ctx, attempts=attempts[key])


def test_retry_until_success(client: Client) -> None:
    run = client.wait(client.start("t_flaky", {"key": "a", "succeed_on": 3}), timeout=10)
    assert run.status == "succeeded"
    assert run.result["attempts"] == 3
    assert [(s.attempt, s.status) for s in run.steps] == [(1, "failed"), (2, "failed"), (3, "succeeded")]


def test_retry_exhausted_fails_run(client: Client) -> None:
    run = client.wait(client.start("t_flaky", {"key": "b", "succeed_on": 9}), timeout=10)
    assert run.status == "failed"
    assert run.error == {"step": "sometimes", "type": "ConnectionError", "message": "attempt 3 failed"}
    assert len(run.steps) == 3


hard = Workflow("t_nonretryable")


class Refused(NonRetryableError):
    pass


@hard.step(retry=Retry(max_attempts=5, base=10))
def refuse(ctx: Any) -> Any:
    raise Refused("card permanently declined")


def test_non_retryable_error_skips_attempts(client: Client) -> None:
    run = client.wait(client.start("t_nonretryable", {}), timeout=10)
    assert run.status == "failed"
    assert run.error["type"] == "Refused"
    assert len(run.steps) == 1


only_value = Workflow("t_retry_on")


@only_value.step(retry=Retry(max_attempts=4, base=10, retry_on=(ValueError,)))
def typed(ctx: Any) -> Any:
    raise KeyError("not retried")


def test_retry_on_filters_exceptions(client: Client) -> None:
    run = client.wait(client.start("t_retry_on", {}), timeout=10)
    assert run.status == "failed" and len(run.steps) == 1


slow = Workflow("t_step_timeout")


@slow.step(timeout=seconds(0.2), retry=Retry(max_attempts=2, base=10, jitter=False))
def too_slow(ctx: Any) -> Any:
    time.sleep(1)
    return ctx


@slow.step(timeout=seconds(0.2))
async def too_slow_async(ctx: Any) -> Any:
    await asyncio.sleep(1)
    return ctx


def test_step_timeout_fails_attempts(client: Client) -> None:
    run = client.wait(client.start("t_step_timeout", {}), timeout=10)
    assert run.status == "failed"
    assert run.error["type"] == "StepTimeout"
    assert [s.attempt for s in run.steps] == [1, 2]


deadline = Workflow("t_workflow_timeout", timeout=seconds(0.5))


@deadline.step
def never_done(ctx: Any) -> Any:
    from durable import sleep

    sleep(seconds(30))
    return ctx


def test_workflow_timeout_ends_timed_out(client: Client) -> None:
    run = client.wait(client.start("t_workflow_timeout", {}), timeout=10)
    assert run.status == "timed_out"
    assert run.error["type"] == "WorkflowTimeout"


branchy = Workflow("t_branch")


@branchy.step
def decide(ctx: Any) -> Any:
    return ctx


with branchy.branch(on=lambda ctx: ctx["kind"]) as b:

    @b.case("single")
    def one(ctx: Any) -> Any:
        return assign(ctx, path=["one"])

    with b.case("multi") as case:

        @case.step
        def multi_a(ctx: Any) -> Any:
            return assign(ctx, path=["a"])

        @case.step
        def multi_b(ctx: Any) -> Any:
            return assign(ctx, path=[*ctx["path"], "b"])

    @b.case(when=lambda v: isinstance(v, int) and v > 100)
    def big(ctx: Any) -> Any:
        return assign(ctx, path=["big"])

    @b.default
    def other(ctx: Any) -> Any:
        return assign(ctx, path=["default"])


@branchy.step
def after_branch(ctx: Any) -> Any:
    return assign(ctx, path=[*ctx["path"], "after"])


strict = Workflow("t_branch_nodefault")


@strict.step
def start_strict(ctx: Any) -> Any:
    return ctx


with strict.branch(on=lambda ctx: ctx["kind"]) as sb:

    @sb.case("x")
    def only_x(ctx: Any) -> Any:
        return ctx


@pytest.mark.parametrize(("kind", "path"), [
    ("single", ["one", "after"]), ("multi", ["a", "b", "after"]), (500, ["big", "after"]),
    ("zzz", ["default", "after"]),
])
def test_branch_cases(client: Client, kind: Any, path: list[str]) -> None:
    run = client.wait(client.start("t_branch", {"kind": kind}), timeout=10)
    assert run.status == "succeeded", run.error
    assert run.result["path"] == path


def test_branch_without_match_fails_naming_value(client: Client) -> None:
    run = client.wait(client.start("t_branch_nodefault", {"kind": "nope"}), timeout=10)
    assert run.status == "failed"
    assert "'nope'" in run.error["message"] and "no default" in run.error["message"]


fan = Workflow("t_parallel")


@fan.step
def fan_init(ctx: Any) -> Any:
    return ctx


with fan.parallel(max_concurrency=2) as p:

    @p.step
    def pa(ctx: Any) -> Any:
        time.sleep(0.05)
        return {"a": ctx["x"]}

    @p.step
    def pb(ctx: Any) -> Any:
        raise RuntimeError("b broke")

    @p.step
    def pc(ctx: Any) -> Any:
        return {"c": 3}


@fan.step
def fan_done(ctx: Any) -> Any:
    return assign(ctx, seen=sorted(ctx["__results__"]))


def test_parallel_results_and_errors(client: Client) -> None:
    run = client.wait(client.start("t_parallel", {"x": 1}), timeout=10)
    assert run.status == "succeeded", run.error
    results = run.result["__results__"]
    assert results["pa"] == ["ok", {"a": 1}]
    assert results["pb"] == ["error", "b broke"]
    assert results["pc"] == ["ok", {"c": 3}]
    assert run.result["seen"] == ["pa", "pb", "pc"]


fan_into = Workflow("t_parallel_into")


def merge(ctx: Any, results: dict[str, tuple[str, Any]]) -> Any:
    if any(status == "error" for status, _ in results.values()):
        raise NonRetryableError("a fetch failed")
    return assign(ctx, total=sum(v["v"] for _, v in results.values()))


@fan_into.step
def into_init(ctx: Any) -> Any:
    return ctx


with fan_into.parallel(into=merge) as p2:

    @p2.step
    def v1(ctx: Any) -> Any:
        return {"v": 1}

    @p2.step
    def v2(ctx: Any) -> Any:
        if ctx.get("fail"):
            raise RuntimeError("v2 failed")
        return {"v": 2}


def test_parallel_into(client: Client) -> None:
    ok = client.wait(client.start("t_parallel_into", {}), timeout=10)
    assert ok.status == "succeeded" and ok.result["total"] == 3
    bad = client.wait(client.start("t_parallel_into", {"fail": True}), timeout=10)
    assert bad.status == "failed" and bad.error["message"] == "a fetch failed"


limited = Workflow("t_parallel_limited")


@limited.step
def limited_init(ctx: Any) -> Any:
    return ctx


with limited.parallel(max_concurrency=2) as p3:
    for _name in ("l1", "l2", "l3", "l4"):
        p3.step(name=_name)(lambda ctx: time.sleep(0.1))


def test_parallel_max_concurrency_respected(client: Client) -> None:
    run = client.wait(client.start("t_parallel_limited", {}), timeout=10)
    assert run.status == "succeeded", run.error
    members = [s for s in run.steps if s.name.startswith("l") and s.name != "limited_init"]
    assert len(members) == 4
    peak = max(sum(1 for o in members if o.started_at <= s.started_at < o.finished_at) for s in members)
    assert peak == 2


retried_then_naps = Workflow("t_retried_then_naps")


@retried_then_naps.step
def steady(input: Any) -> Any:
    return input  # moving on from here makes the task row follow the run (migration 0008)


@retried_then_naps.step(retry=Retry(max_attempts=3, backoff="constant", base=10, jitter=False))
def shaky(input: Any) -> Any:
    attempts[input["key"]] = attempts.get(input["key"], 0) + 1
    if attempts[input["key"]] == 1:
        raise RuntimeError("first try fails")
    return input


@retried_then_naps.step
def naps(ctx: Any) -> Any:
    from durable import sleep

    sleep(30)  # parks the task on a timer: its row stops following the run (migration 0008)
    return ctx


@retried_then_naps.step
def after_nap(ctx: Any) -> Any:
    return assign(ctx, done=True)


def test_a_step_after_a_retried_one_starts_at_attempt_one(client: Client) -> None:
    """The task row keeps the retried step's attempt while it follows the run; a later step that
    waits must still be the first attempt of its own (as recorded, and as its retry budget counts)."""
    run = client.wait(client.start("t_retried_then_naps", {"key": "rtn"}), timeout=15)
    assert run.status == "succeeded" and run.result == {"key": "rtn", "done": True}
    assert [(s.name, s.attempt, s.status) for s in run.steps] == [
        ("steady", 1, "succeeded"), ("shaky", 1, "failed"), ("shaky", 2, "succeeded"), ("naps", 1, "succeeded"),
        ("after_nap", 1, "succeeded")]
