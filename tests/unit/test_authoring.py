"""The authoring API without I/O: helpers, retry policy, definitions, cron, JSON paths, public names."""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

import pytest

import durable
from durable import Context, Retry, Workflow, append, assign, days, hours, increment, minutes, seconds, update
from durable.dsl import REGISTRY
from durable.errors import DefinitionError, InvalidInput
from durable.jsonutil import dumps
from durable.schedule import next_tick
from durable.timeutil import to_ms

FROZEN_API = [
    "AsyncClient", "ChildWorkflowFailed", "Client", "Context", "ContextTooLarge", "Cron", "DefinitionError",
    "DurableError", "InvalidInput", "InvalidSchedule", "NonRetryableError", "Retry", "Run", "RunNotActive",
    "RunNotFound", "RunStatus", "RunTimeout", "StepInfo", "StepTimeout", "UnknownQueue", "WaitInfo",
    "WaitTimeout", "Workflow", "WorkflowNotFound", "append", "assign", "days", "hours", "increment", "minutes",
    "schedule_at", "seconds", "sleep", "start_child", "update", "wait_for_all", "wait_for_any",
    "wait_for_approval", "wait_for_event", "wait_for_input",
]


def test_public_api_is_frozen() -> None:
    assert sorted(durable.__all__) == sorted(FROZEN_API)


def test_time_helpers() -> None:
    assert seconds(30) == 30_000 and minutes(5) == 300_000 and hours(2) == 7_200_000 and days(7) == 604_800_000
    assert to_ms(timedelta(seconds=1.5)) == 1500
    with pytest.raises(ValueError, match="must not be negative"):
        to_ms(-1)


def test_context_helpers_are_pure() -> None:
    ctx = Context({"a": 1, "items": [1]})
    assert assign(ctx, "b", 2) == {"a": 1, "items": [1], "b": 2}
    assert assign(ctx, {"c": 3}) == {"a": 1, "items": [1], "c": 3}
    assert assign(ctx, d=4)["d"] == 4
    assert update(ctx, "a", 0, lambda v: v + 1)["a"] == 2
    assert update(ctx, "z", 0, lambda v: v + 1)["z"] == 0
    assert append(ctx, "items", 2)["items"] == [1, 2]
    assert increment(ctx, "a")["a"] == 2 and increment(ctx, "n", by=5)["n"] == 5
    assert ctx == {"a": 1, "items": [1]}
    assert assign(ctx, "x", 1).x == 1
    with pytest.raises(AttributeError, match="no key 'missing'"):
        _ = ctx.missing


def test_retry_delays() -> None:
    assert [Retry(backoff="constant", base=100, jitter=False).delay(n) for n in (1, 2, 3)] == [100, 100, 100]
    assert [Retry(backoff="linear", base=100, jitter=False).delay(n) for n in (1, 2, 3)] == [100, 200, 300]
    exp = Retry(backoff="exponential", base=100, max_delay=350, jitter=False)
    assert [exp.delay(n) for n in (1, 2, 3, 4)] == [100, 200, 350, 350]
    rng = random.Random(7)
    jittered = [Retry(backoff="constant", base=1000).delay(1, rng) for _ in range(200)]
    assert min(jittered) >= 500 and max(jittered) <= 1000 and len(set(jittered)) > 50
    with pytest.raises(ValueError, match="backoff must be"):
        Retry(backoff="fibonacci")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_attempts"):
        Retry(max_attempts=0)


def test_retry_policy_decisions() -> None:
    policy = Retry(max_attempts=3, retry_on=(ConnectionError,))
    assert policy.should_retry(ConnectionError(), 1)
    assert not policy.should_retry(ConnectionError(), 3)
    assert not policy.should_retry(KeyError(), 1)
    assert not policy.should_retry(durable.NonRetryableError(), 1)


def test_definition_errors() -> None:
    wf = Workflow("unit_defs")

    @wf.step
    def a(ctx: Any) -> Any:
        return ctx

    with pytest.raises(DefinitionError, match="already has a step named 'a'"):
        wf.step(name="a")(lambda ctx: ctx)

    bad = Workflow("unit_bad_comp")
    REGISTRY.remove("unit_bad_comp")  # a malformed definition must not reach other tests' workers
    bad.step(compensate="ghost")(lambda ctx: ctx)
    with pytest.raises(DefinitionError, match="names compensation 'ghost'"):
        _ = bad.graph
    with pytest.raises(DefinitionError, match="non-empty string"):
        Workflow("")


def test_graph_navigation() -> None:
    wf = Workflow("unit_graph")
    wf.step(name="s1")(lambda ctx: ctx)
    with wf.branch(on=lambda c: c["k"]) as b:
        with b.case(1) as case:
            case.step(name="c1a")(lambda ctx: ctx)
            case.step(name="c1b")(lambda ctx: ctx)
        b.default(lambda ctx: ctx)
    wf.step(name="end")(lambda ctx: ctx)
    g = wf.graph
    assert g.first == "s1"
    assert g.after("s1") == "branch_2"
    assert g.after("c1a") == "c1b" and g.after("c1b") == "end" and g.after("end") is None
    assert g.enter("branch_2", {"k": 1}).step.name == "c1a"  # type: ignore[union-attr]
    assert g.enter("branch_2", {"k": 9}).step.name == "<lambda>"  # type: ignore[union-attr]
    with pytest.raises(DefinitionError, match="step 'gone' no longer exists"):
        g.enter("gone", {})


def test_json_errors_name_the_key_path() -> None:
    assert dumps({"a": [1, "x", None, True, 1.5]}, what="input") == '{"a":[1,"x",null,true,1.5]}'
    with pytest.raises(InvalidInput, match=r"input\['a'\]\[0\]: set is not JSON-serialisable"):
        dumps({"a": [{1}]}, what="input")
    with pytest.raises(InvalidInput, match="over the limit of 10 bytes"):
        dumps({"a": "0123456789"}, what="input", limit=10)


NY = ZoneInfo("America/New_York")


def test_cron_daylight_saving() -> None:
    # Spring forward: 02:30 does not exist on 2026-03-08; the tick fires once, at 03:00 EDT.
    t = next_tick("30 2 * * *", "America/New_York", datetime(2026, 3, 7, 12, tzinfo=NY))
    assert t.astimezone(NY).isoformat() == "2026-03-08T03:00:00-04:00"
    assert next_tick("30 2 * * *", "America/New_York", t).astimezone(NY).isoformat() == "2026-03-09T02:30:00-04:00"
    # Fall back: 01:30 happens twice on 2026-11-01; the tick fires once.
    t1 = next_tick("30 1 * * *", "America/New_York", datetime(2026, 10, 31, 12, tzinfo=NY))
    t2 = next_tick("30 1 * * *", "America/New_York", t1)
    assert (t2 - t1) > timedelta(hours=23)
    # 09:00 New York is 13:00 UTC in summer and 14:00 UTC in winter.
    assert next_tick("0 9 * * *", "America/New_York", datetime(2026, 7, 1, tzinfo=NY)).hour == 13
    assert next_tick("0 9 * * *", "America/New_York", datetime(2026, 12, 1, tzinfo=NY)).hour == 14
