"""Fast tests of the operator's own logic, without an API server.

The real behaviour is proven against kube-apiserver in tests/k8s; these pin down the pieces whose edge
cases are cheaper to enumerate here: how a run renders as a status, delivery ids, schedule ticks and
policies (against a recording stand-in for the Kubernetes calls), and the reflector's coalescing.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from durable import Run
from durable_operator.constants import FINALIZER, LABEL_COMPLETED, LABEL_SCHEDULE
from durable_operator.deliveries import delivery_id
from durable_operator.notify import Reflector
from durable_operator.schedules import Scheduler, latest_tick
from durable_operator.status import MAX_RESULT_BYTES, MAX_STEPS, render

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


def make_run(**fields: Any) -> Run:
    base: dict[str, Any] = {"id": "r-1", "workflow": "wf", "status": "running", "definition_hash": "h",
                            "queue": "default", "priority": 0, "created_at": T0, "updated_at": T0}
    return Run.model_validate({**base, **fields})


def step(name: str, attempt: int, status: str = "succeeded", at: int = 0, **extra: Any) -> dict[str, Any]:
    return {"name": name, "kind": "step", "attempt": attempt, "status": status,
            "started_at": T0 + timedelta(seconds=at), "finished_at": T0 + timedelta(seconds=at + 1), **extra}


# ---- status rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize(("engine", "phase"), [
    ("pending", "Pending"), ("running", "Running"), ("waiting", "Waiting"), ("succeeded", "Succeeded"),
    ("failed", "Failed"), ("cancelled", "Cancelled"), ("compensating", "Compensating"),
    ("compensated", "Compensated"), ("timed_out", "TimedOut"),
])
def test_every_engine_status_has_its_phase(engine: str, phase: str) -> None:
    status = render(make_run(status=engine))
    assert status["phase"] == phase
    succeeded = next(c for c in status["conditions"] if c["type"] == "Succeeded")
    expected = {"Succeeded": "True", "Failed": "False", "Cancelled": "False", "Compensated": "False",
                "TimedOut": "False"}.get(phase, "Unknown")
    assert succeeded["status"] == expected


def test_steps_show_the_latest_attempt_in_first_start_order_and_are_bounded() -> None:
    run = make_run(steps=[step("a", 1, "failed", at=0, error={"message": "boom"}), step("b", 1, at=5),
                          step("a", 2, at=3)])
    steps = render(run)["steps"]
    assert [(s["name"], s["attempts"], s["phase"]) for s in steps] == [("a", 2, "Succeeded"), ("b", 1, "Succeeded")]
    assert steps[0]["startedAt"] == "2026-03-01T12:00:00.000Z"  # the first attempt's start

    many = make_run(steps=[step(f"s{i:03d}", 1, at=i) for i in range(MAX_STEPS + 7)])
    status = render(many)
    assert len(status["steps"]) == MAX_STEPS and status["stepsTruncated"] == 7
    assert status["steps"][-1]["name"] == f"s{MAX_STEPS + 6:03d}"  # the newest are kept


def test_a_big_result_stays_out_of_the_status() -> None:
    small = render(make_run(status="succeeded", result={"ok": True}, finished_at=T0))
    assert small["result"] == {"ok": True} and small["resultTruncated"] is None
    big = render(make_run(status="succeeded", result={"blob": "x" * MAX_RESULT_BYTES}, finished_at=T0))
    assert big["result"] is None and big["resultTruncated"] is True and big["resultBytes"] > MAX_RESULT_BYTES


def test_waiting_and_errors_say_what_and_where() -> None:
    waiting = render(make_run(status="waiting", current_step="approve", waits=[{
        "step": "approve", "idx": 0, "kind": "input", "names": ["manager"], "prompt": "OK?", "status": "open",
        "created_at": T0}]))
    assert waiting["waitingFor"]["name"] == "manager" and waiting["currentStep"] == "approve"
    assert waiting["message"] == "waiting for input 'manager': OK?"
    failed = render(make_run(status="failed", finished_at=T0, current_step="charge",
                             error={"step": "charge", "type": "ValueError", "message": "card declined"}))
    assert failed["message"] == "ValueError in step charge: card declined"
    assert failed["currentStep"] is None and failed["waitingFor"] is None


def test_rendering_is_deterministic() -> None:
    run = make_run(steps=[step("a", 1)], progress="1/3")
    assert render(run) == render(make_run(steps=[step("a", 1)], progress="1/3"))


# ---- deliveries ---------------------------------------------------------------------------------


def test_delivery_ids() -> None:
    assert delivery_id("event", "e1", {"any": 1}) == "event:e1"
    same = delivery_id("input", "manager", {"a": 1, "b": [1, 2]})
    assert same == delivery_id("input", "manager", {"b": [1, 2], "a": 1})  # key order is not a new value
    assert same != delivery_id("input", "manager", {"a": 2, "b": [1, 2]})  # a changed value is a new delivery
    assert same != delivery_id("input", "director", {"a": 1, "b": [1, 2]})


# ---- schedules ----------------------------------------------------------------------------------


def test_latest_tick_in_a_time_zone_across_daylight_saving() -> None:
    # Europe/Berlin springs forward on 2026-03-29: 02:30 local does not exist that day.
    after = datetime(2026, 3, 29, 3, 0, tzinfo=UTC)  # 05:00 local (CEST)
    assert latest_tick("30 2 * * *", "Europe/Berlin", after) <= after
    assert latest_tick("0 9 * * *", "Europe/Berlin", datetime(2026, 3, 30, 8, 0, tzinfo=UTC)) == \
        datetime(2026, 3, 30, 7, 0, tzinfo=UTC)  # 09:00 CEST
    assert latest_tick("*/5 * * * *", "UTC", datetime(2026, 1, 1, 0, 7, 30, tzinfo=UTC)) == \
        datetime(2026, 1, 1, 0, 5, tzinfo=UTC)


class FakeKube:
    """Records the Kubernetes calls the scheduler makes; holds the WorkflowRuns it created."""

    def __init__(self) -> None:
        self.runs: dict[str, dict[str, Any]] = {}
        self.status_patches: list[dict[str, Any]] = []
        self.run_patches: list[tuple[str, dict[str, Any]]] = []
        self.deleted: list[str] = []
        self.events: list[tuple[str, str]] = []

    def create_run(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        name = body["metadata"]["name"]
        if name in self.runs:
            raise type("Conflict", (Exception,), {"status": 409})()
        body["metadata"]["creationTimestamp"] = f"2026-01-01T00:{len(self.runs):02d}:00Z"
        self.runs[name] = body
        return body

    def list_runs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        key, value = label_selector.split("=")
        return [r for r in self.runs.values() if r["metadata"]["labels"].get(key) == value]

    def patch_run(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.run_patches.append((name, patch))
        return {}

    def delete_run(self, namespace: str, name: str) -> None:
        self.deleted.append(name)
        self.runs.pop(name, None)

    def patch_schedule_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self.status_patches.append(status)

    def post_event(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append((type_, reason))


def schedule(**spec: Any) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": "nightly", "uid": "u-1", "generation": 1,
                         "creationTimestamp": "2026-01-01T00:00:00Z"},
            "spec": {"workflow": "wf", "schedule": "*/5 * * * *", **spec}, "status": {}}


def test_a_tick_creates_one_run_with_a_deterministic_name() -> None:
    kube, body = FakeKube(), schedule(input={"x": 1})
    sched = Scheduler(kube)  # type: ignore[arg-type]
    now = datetime(2026, 1, 1, 0, 7, tzinfo=UTC)
    sched.evaluate(body, now)
    sched.evaluate(body, now + timedelta(seconds=1))  # the same tick again: nothing new
    tick = int(datetime(2026, 1, 1, 0, 5, tzinfo=UTC).timestamp())
    assert list(kube.runs) == [f"nightly-{tick}"]
    run = kube.runs[f"nightly-{tick}"]
    assert run["spec"] == {"workflow": "wf", "input": {"x": 1}}
    assert run["metadata"]["labels"][LABEL_SCHEDULE] == "nightly"
    assert run["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert body["status"]["lastScheduleTime"] == "2026-01-01T00:05:00.000Z"
    assert body["status"]["nextScheduleTime"] == "2026-01-01T00:10:00.000Z"

    # A second scheduler (an operator restart) at the same tick finds the run already there.
    fresh = schedule(input={"x": 1})
    Scheduler(kube).evaluate(fresh, now)  # type: ignore[arg-type]
    assert len(kube.runs) == 1 and fresh["status"]["lastScheduleTime"] == body["status"]["lastScheduleTime"]


def test_forbid_skips_a_tick_while_a_run_is_active_and_replace_cancels_it() -> None:
    for policy in ("Forbid", "Replace"):
        kube, body = FakeKube(), schedule(concurrencyPolicy=policy)
        sched = Scheduler(kube)  # type: ignore[arg-type]
        sched.evaluate(body, datetime(2026, 1, 1, 0, 7, tzinfo=UTC))
        sched.evaluate(body, datetime(2026, 1, 1, 0, 12, tzinfo=UTC))  # the first run is still active
        if policy == "Forbid":
            assert len(kube.runs) == 1
            assert body["status"]["lastSkippedTime"] == "2026-01-01T00:10:00.000Z"
            assert ("Normal", "SkippedForbid") in kube.events
        else:
            assert len(kube.runs) == 2
            (name, patch), = kube.run_patches
            assert name == next(iter(kube.runs)) and patch["spec"]["cancel"] is True


def test_a_tick_missed_past_the_starting_deadline_is_skipped_with_a_warning() -> None:
    kube, body = FakeKube(), schedule(startingDeadlineSeconds=30)
    Scheduler(kube).evaluate(body, datetime(2026, 1, 1, 0, 6, tzinfo=UTC))  # type: ignore[arg-type]
    assert kube.runs == {}
    assert body["status"]["lastSkippedTime"] == "2026-01-01T00:05:00.000Z"
    assert ("Warning", "MissedSchedule") in kube.events


def test_suspend_and_history_limits() -> None:
    kube, body = FakeKube(), schedule(suspend=True)
    Scheduler(kube).evaluate(body, datetime(2026, 1, 1, 0, 7, tzinfo=UTC))  # type: ignore[arg-type]
    assert kube.runs == {} and body["status"]["nextScheduleTime"] is None

    kube, body = FakeKube(), schedule(successfulRunsHistoryLimit=1, failedRunsHistoryLimit=0)
    sched = Scheduler(kube)  # type: ignore[arg-type]
    for minute in (7, 12, 17):
        sched.evaluate(body, datetime(2026, 1, 1, 0, minute, tzinfo=UTC))
        for r in kube.runs.values():  # every run ends before the next tick
            r["status"] = {"phase": "Succeeded", "finishedAt": "2026-01-01T00:00:00Z"}
            r["metadata"]["labels"][LABEL_COMPLETED] = "true"
    sched.evaluate(body, datetime(2026, 1, 1, 0, 18, tzinfo=UTC))  # no tick: the refresh prunes
    assert len(kube.runs) == 1 and len(kube.deleted) == 2


# ---- the reflector -------------------------------------------------------------------------------


class FakeClient:
    def __init__(self, run: Run) -> None:
        self.run = run
        self.reads = 0

    def get(self, run_id: str) -> Run:
        self.reads += 1
        return self.run


class FakeStatusKube:
    def __init__(self) -> None:
        self.statuses: list[dict[str, Any]] = []
        self.metadata: list[dict[str, Any]] = []
        self.events: list[str] = []

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        self.statuses.append(status)
        return {"metadata": {"resourceVersion": str(100 + len(self.statuses))}}

    def patch_run(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        self.metadata.append(patch)
        return {}

    def post_event(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        self.events.append(reason)


async def _settle(reflector: Reflector, client: FakeClient, seconds: float) -> None:
    tasks = [asyncio.create_task(reflector._dispatch()), asyncio.create_task(reflector._worker())]
    await asyncio.sleep(seconds)
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


def test_reflector_coalesces_a_burst_and_finishes_a_run_with_one_label_patch() -> None:
    async def scenario() -> FakeStatusKube:
        client, kube = FakeClient(make_run(status="running", progress="1/3")), FakeStatusKube()
        reflector = Reflector(client, kube, min_interval=0.2, first_grace=0.0)  # type: ignore[arg-type]
        reflector._loop = asyncio.get_running_loop()
        reflector.track("r-1", "ns", "wfr", "uid-1", extra={"runId": "r-1"})
        reflector.observed("r-1", None, None, [FINALIZER])
        worker = asyncio.create_task(_settle(reflector, client, 0.6))
        for i in range(50):  # a burst of step notifications for one run
            client.run = make_run(status="running", progress=f"{1 + i % 2}/3")
            reflector.mark("r-1")
            await asyncio.sleep(0.004)
        client.run = make_run(status="succeeded", progress="3/3", finished_at=T0, result={"ok": 1})
        reflector.mark("r-1")
        await worker
        assert not reflector.is_tracked("r-1")  # finished: forgotten
        reflector.track("r-1", "ns", "wfr", "uid-1", resource_version="50")  # a stale watch event
        assert not reflector.is_tracked("r-1")
        assert client.reads < 20, f"a burst of 51 notifications cost {client.reads} reads"
        return kube

    kube = asyncio.run(scenario())
    phases = [s["phase"] for s in kube.statuses]
    assert phases[-1] == "Succeeded" and kube.statuses[-1]["result"] == {"ok": 1}
    assert len(kube.statuses) <= 4, f"a burst of 51 notifications cost {len(kube.statuses)} status patches"
    assert kube.statuses[0]["runId"] == "r-1"  # the start handler's fields ride on the first patch
    assert kube.metadata == [{"metadata": {"labels": {LABEL_COMPLETED: "true"}, "finalizers": None}}]
    assert kube.events.count("Succeeded") == 1
