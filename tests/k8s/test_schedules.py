"""WorkflowSchedule end to end: runs on time with deterministic names, Forbid, suspend, history limits.

Schedules use a sixth (seconds) cron field so the tests take seconds, not minutes.
"""

from __future__ import annotations

import json
import time
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
