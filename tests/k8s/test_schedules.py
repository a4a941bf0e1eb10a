"""WorkflowSchedule end to end: runs on time with deterministic names, Forbid, Replace, suspend, history
limits, startingDeadlineSeconds.

Schedules use a sixth (seconds) cron field so the tests take seconds, not minutes.
"""

from __future__ import annotations

import json
import re
import time
from datetime import datetime
from typing import Any

import pytest

from conftest import Cluster

pytestmark = pytest.mark.k8s


def schedule(name: str, workflow: str, cron: str, **spec: Any) -> str:
    return json.dumps({"apiVersion": "durable.dev/v1alpha1", "kind": "WorkflowSchedule", "metadata": {"name": name},
                       "spec": {"workflow": workflow, "schedule": cron, **spec}})


def runs_of(cluster: Cluster, name: str) -> list[dict[str, Any]]:
    out = cluster.kubectl("get", "wfr", "-l", f"durable.dev/schedule={name}", "-o", "json").stdout
    return sorted(json.loads(out)["items"], key=lambda r: r["metadata"]["name"])


def test_schedule_creates_runs_on_time(cluster: Cluster) -> None:
    cluster.apply(schedule("orders", "process_order", "* * * * * */3", timeZone="Europe/Paris",
                           input={"id": "s1", "items": [{"price": 1}]}, successfulRunsHistoryLimit=2,
                           runTemplate={"labels": {"team": "shop"}}))
    runs = cluster.wait_until(lambda: (r := runs_of(cluster, "orders")) and len(r) >= 2 and r, timeout=30,
                              what="two scheduled runs")
    for r in runs:
        tick = int(r["metadata"]["name"].rsplit("-", 1)[1])
        assert tick % 3 == 0
        created = r["metadata"]["creationTimestamp"]
        assert abs(time.mktime(time.strptime(created, "%Y-%m-%dT%H:%M:%SZ")) - time.timezone - tick) <= 3
        assert r["metadata"]["labels"]["team"] == "shop"
        assert r["metadata"]["ownerReferences"][0]["kind"] == "WorkflowSchedule"
    st = cluster.get("wfs", "orders")["status"]
    assert st["lastScheduleTime"] and st["nextScheduleTime"] > st["lastScheduleTime"]
    # History limit: old successful runs are deleted, the latest kept.
    seen: set[str] = set()

    def ticks() -> bool:
        seen.update(r["metadata"]["name"] for r in runs_of(cluster, "orders"))
        return len(seen) >= 5

    cluster.wait_until(ticks, timeout=30, what="more ticks")
    cluster.kubectl("patch", "wfs", "orders", "--type", "merge", "-p", '{"spec":{"suspend":true}}')
    cluster.wait_until(lambda: len(runs_of(cluster, "orders")) <= 2, timeout=15,
                       what="successfulRunsHistoryLimit=2 to prune older runs")
    assert cluster.get("wfs", "orders")["status"]["lastSuccessfulTime"]
    # Suspended: no new ticks.
    before = {r["metadata"]["name"] for r in runs_of(cluster, "orders")}
    time.sleep(4)
    assert {r["metadata"]["name"] for r in runs_of(cluster, "orders")} <= before
    row = cluster.kubectl("get", "wfs", "orders", "--no-headers").stdout.split()
    assert row[1:5] == ["process_order", "*", "*", "*"] or row[1] == "process_order"


def test_forbid_skips_ticks_while_a_run_is_active(cluster: Cluster) -> None:
    cluster.apply(schedule("approvals", "expense_approval", "* * * * * */2", concurrencyPolicy="Forbid",
                           input={"employee_id": "e9", "amount": 5}))
    first = cluster.wait_until(lambda: runs_of(cluster, "approvals"), timeout=20, what="the first run")[0]
    name = first["metadata"]["name"]
    cluster.wait_phase(name, "Waiting")
    time.sleep(6)
    assert [r["metadata"]["name"] for r in runs_of(cluster, "approvals")] == [name]
    st = cluster.get("wfs", "approvals")["status"]
    assert st["activeCount"] == 1 and st["active"][0]["name"] == name and st.get("lastSkippedTime")
    cluster.kubectl("patch", "wfr", name, "--type", "merge", "-p", '{"spec":{"inputs":{"manager":"approved"}}}')
    cluster.wait_phase(name, "Succeeded")
    cluster.wait_until(lambda: len(runs_of(cluster, "approvals")) >= 2 or None, timeout=20,
                       what="a new run once the active one finished")
    cluster.kubectl("delete", "wfs", "approvals")


def _when(stamp: str) -> float:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00")).timestamp()


def _suspended(cluster: Cluster, name: str) -> bool:
    conds = (cluster.get("wfs", name).get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["reason"] == "Suspended" for c in conds)


def test_replace_cancels_the_active_run_at_the_next_tick(cluster: Cluster) -> None:
    cluster.apply(schedule("replacer", "expense_approval", "* * * * * */2", concurrencyPolicy="Replace",
                           input={"employee_id": "e7", "amount": 5}))
    cluster.wait_until(lambda: len(runs_of(cluster, "replacer")) >= 2, timeout=30, what="a second tick")
    cluster.kubectl("patch", "wfs", "replacer", "--type", "merge", "-p", '{"spec":{"suspend":true}}')
    cluster.wait_until(lambda: _suspended(cluster, "replacer"), timeout=15, what="the schedule to be suspended")
    names = [r["metadata"]["name"] for r in runs_of(cluster, "replacer")]
    assert len(names) >= 2
    # Every run but the newest was cancelled by the tick after it; the newest one is left running.
    for name in names[:-1]:
        st = cluster.wait_phase(name, ("Cancelled", "Succeeded", "Failed"))
        assert st["phase"] == "Cancelled", (name, st)
        by = re.search(r"replaced by replacer-(\d+) \(concurrencyPolicy: Replace\)", st["message"])
        assert by and int(by.group(1)) > int(name.rsplit("-", 1)[1]), st["message"]
    assert cluster.wait_phase(names[-1], "Waiting")["waitingFor"]["name"] == "manager"
    ids = [cluster.status(n)["runId"] for n in names]
    engine = dict(cluster.sql("SELECT id::text, status FROM executions WHERE id::text = ANY(%s)", ids))
    assert [engine[i] for i in ids] == ["cancelled"] * (len(ids) - 1) + ["waiting"], engine
    cluster.kubectl("delete", "wfs", "replacer", "--timeout=30s")


def test_only_the_latest_missed_tick_inside_the_deadline_is_caught_up(cluster: Cluster) -> None:
    # Two schedules created suspended, with a cron that does not fire soon; then given three ticks just
    # after their creation (creationTimestamp counts as handled), all missed while suspended. Unsuspended
    # once those ticks are past: with a generous deadline only the latest one is caught up; with a 1 s
    # deadline (exceeded by construction) none is. Ticks are fixed seconds, so a slow machine only
    # delays the evaluation, never changes the expected outcome.
    yearly = "0 0 1 1 *"
    cluster.apply(schedule("catchup", "process_order", yearly, suspend=True, startingDeadlineSeconds=60,
                           input={"id": "cu", "items": [{"price": 1}]}))
    cluster.apply(schedule("toolate", "process_order", yearly, suspend=True, startingDeadlineSeconds=1,
                           input={"id": "tl", "items": [{"price": 1}]}))
    created = max(_when(cluster.get("wfs", n)["metadata"]["creationTimestamp"]) for n in ("catchup", "toolate"))
    ticks = [int(created) + k for k in (1, 2, 3)]
    cron = "* * * * * " + ",".join(str(t % 60) for t in ticks)  # seconds field; next repeat is a minute on
    for name in ("catchup", "toolate"):
        cluster.kubectl("patch", "wfs", name, "--type", "merge", "-p", json.dumps({"spec": {"schedule": cron}}))
    time.sleep(max(0.0, ticks[-1] + 2.5 - time.time()))  # the last tick is now more than 1 s old
    for name in ("catchup", "toolate"):
        cluster.kubectl("patch", "wfs", name, "--type", "merge", "-p", '{"spec":{"suspend":false}}')

    runs = cluster.wait_until(lambda: runs_of(cluster, "catchup"), timeout=30, what="the catch-up run")
    assert [r["metadata"]["name"] for r in runs] == [f"catchup-{ticks[-1]}"]
    st = cluster.wait_until(lambda: (s := cluster.get("wfs", "toolate").get("status") or {})
                            .get("lastSkippedTime") and s, timeout=30, what="the missed tick to be recorded")
    assert _when(st["lastSkippedTime"]) == ticks[-1] and not st.get("lastScheduleTime")
    assert any(e.startswith("MissedSchedule") for e in cluster.events("toolate"))
    assert _when(cluster.get("wfs", "catchup")["status"]["lastScheduleTime"]) == ticks[-1]
    time.sleep(2)  # a few more evaluations: nothing older is fired late
    assert [r["metadata"]["name"] for r in runs_of(cluster, "catchup")] == [f"catchup-{ticks[-1]}"]
    assert runs_of(cluster, "toolate") == []
    assert cluster.wait_phase(f"catchup-{ticks[-1]}", "Succeeded")["result"]["order_id"] == "cu"
    cluster.kubectl("delete", "wfs", "catchup", "toolate", "--timeout=30s")
