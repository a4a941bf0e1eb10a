"""WorkflowRun end to end against a real API server, driven by kubectl as a user drives it."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from datetime import datetime
from typing import Any

import pytest
from tests.support import ROOT

from conftest import Cluster, run_manifest

pytestmark = pytest.mark.k8s
EXAMPLES = ROOT / "examples" / "k8s"
WORKER_APPS = ["tests.k8s.apps"]  # the module's worker also runs the workflows of tests/k8s/apps.py
WORKER_WORKFLOWS = ["k8s_big_result", "k8s_fails"]


def test_examples_reach_succeeded_with_columns(cluster: Cluster) -> None:
    for name in ("order-processing", "dashboard", "bulk-emailer", "trip-booking", "daily-report",
                 "trial-reminder", "input-from-configmap"):
        cluster.kubectl("apply", "-f", str(EXAMPLES / f"{name}.yaml"))
    runs = ["order-1001", "dashboard-u1", "dashboard-v2-u1", "campaign-spring", "trip-lisbon",
            "daily-sales-report-now", "trial-user-9", "order-2002"]
    for name in runs:
        st = cluster.wait_phase(name, ("Succeeded", "Failed", "Cancelled", "Compensated", "TimedOut"))
        assert st["phase"] == "Succeeded", (name, st)
        assert st["runId"] and st["finishedAt"] and st["observedGeneration"] == 1
        conds = {c["type"]: c for c in st["conditions"]}
        assert conds["Accepted"]["status"] == "True" and conds["Succeeded"]["status"] == "True"
        done, total = st["progress"].split("/")
        assert done == total
    order = cluster.status("order-1001")
    assert [s["name"] for s in order["steps"]] == ["validate", "calculate_total", "charge_payment",
                                                   "send_confirmation"]
    assert order["result"]["total"] == 14.5 and order["result"]["confirmed"] is True
    table = cluster.kubectl("get", "wfr", "order-1001").stdout.splitlines()
    assert table[0].split() == ["NAME", "WORKFLOW", "PHASE", "STEP", "PROGRESS", "WAITING", "AGE"]
    assert table[1].split()[:4] == ["order-1001", "process_order", "Succeeded", "4/4"]
    wfr = cluster.get("wfr", "order-1001")
    assert wfr["metadata"]["labels"]["durable.dev/completed"] == "true"
    assert not wfr["metadata"].get("finalizers"), "a finished run must carry no finalizer"
    assert any(e.startswith("Succeeded") for e in cluster.events("order-1001"))
    # Exactly one run per resource, whatever happened.
    assert cluster.sql("SELECT count(*) FROM executions WHERE workflow = 'process_order'")[0][0] == 2


def _waiting_expense(cluster: Cluster, name: str) -> dict[str, object]:
    cluster.apply(run_manifest(name, "expense_approval", {"employee_id": "e1", "amount": 99}))
    st = cluster.wait_phase(name, "Waiting")
    assert st["waitingFor"]["name"] == "manager" and st["waitingFor"]["kind"] == "approval"
    assert "Approve $99" in st["waitingFor"]["prompt"]
    row = cluster.kubectl("get", "wfr", name, "--no-headers").stdout.split()
    assert row[2] == "Waiting" and row[5] == "manager"
    wfr = cluster.get("wfr", name)
    assert wfr["metadata"]["finalizers"] == ["durable.dev/cancel-run"], "an active run holds the finalizer"
    return st


def test_expense_approved_and_rejected_by_patch(cluster: Cluster) -> None:
    _waiting_expense(cluster, "expense-yes")
    _waiting_expense(cluster, "expense-no")
    cluster.kubectl("patch", "wfr", "expense-yes", "--type", "merge", "-p",
                    '{"spec":{"inputs":{"manager":"approved"}}}')
    cluster.kubectl("patch", "wfr", "expense-no", "--type", "merge", "-p",
                    '{"spec":{"inputs":{"manager":"rejected"}}}')
    yes = cluster.wait_phase("expense-yes", "Succeeded")
    no = cluster.wait_phase("expense-no", "Succeeded")
    assert yes["result"]["status"] == "reimbursed" and yes["deliveredInputs"] == ["manager"]
    assert no["result"]["status"] == "rejected" and no["deliveredInputs"] == ["manager"]
    assert yes["waitingFor"] is None if "waitingFor" in yes else True
    assert yes["observedGeneration"] == 2
    # Re-applying the same input (another spec change) delivers nothing twice.
    cluster.kubectl("patch", "wfr", "expense-yes", "--type", "merge", "-p", '{"spec":{"priority":1}}')
    cluster.wait_until(lambda: cluster.status("expense-yes").get("observedGeneration") == 3, what="gen 3")
    assert cluster.sql("SELECT count(*) FROM deliveries")[0][0] == 2


def test_payment_event_by_patch(cluster: Cluster) -> None:
    cluster.kubectl("apply", "-f", str(EXAMPLES / "payment-flow.yaml"))
    st = cluster.wait_phase("payment-inv-5", "Waiting")
    assert st["waitingFor"]["name"] == "payment.success,payment.failed"
    cluster.kubectl("patch", "wfr", "payment-inv-5", "--type", "merge", "-p",
                    json.dumps({"spec": {"events": {"evt-1": {"name": "payment.success",
                                                              "payload": {"amount": 99}}}}}))
    st = cluster.wait_phase("payment-inv-5", "Succeeded")
    assert st["result"]["status"] == "fulfilled" and st["result"]["payment"] == {"amount": 99}
    assert st["deliveredEvents"] == ["evt-1"]


def test_cancel_by_patch_and_by_delete(cluster: Cluster) -> None:
    _waiting_expense(cluster, "expense-cancel")
    cluster.kubectl("patch", "wfr", "expense-cancel", "--type", "merge", "-p",
                    '{"spec":{"cancel":true,"cancelReason":"duplicate claim"}}')
    st = cluster.wait_phase("expense-cancel", "Cancelled")
    assert "duplicate claim" in st["message"]
    cluster.wait_until(lambda: not cluster.get("wfr", "expense-cancel")["metadata"].get("finalizers"),
                       what="finalizer removed after the run ended")

    st = _waiting_expense(cluster, "expense-delete")
    run_id = st["runId"]
    cluster.kubectl("delete", "wfr", "expense-delete", "--wait=true", "--timeout=30s")
    assert not cluster.exists("wfr", "expense-delete")
    assert cluster.sql("SELECT status FROM executions WHERE id = %s", run_id)[0][0] == "cancelled"


def test_unknown_workflow_fails_with_message(cluster: Cluster) -> None:
    cluster.apply(run_manifest("nope", "no_such_workflow", {"a": 1}))
    st = cluster.wait_phase("nope", "Failed")
    assert "unknown workflow 'no_such_workflow'" in st["message"]
    assert st["error"]["type"] == "WorkflowNotFound"
    assert {c["type"]: c["reason"] for c in st["conditions"]}["Accepted"] == "WorkflowNotFound"
    assert not cluster.get("wfr", "nope")["metadata"].get("finalizers")
    cluster.kubectl("delete", "wfr", "nope", "--timeout=30s")


def test_invalid_specs_are_refused_by_the_api_server(cluster: Cluster) -> None:
    bad = cluster.kubectl("apply", "-f", "-", check=False, input=run_manifest("bad", "  "))
    assert bad.returncode != 0 and "spec.workflow must not be blank" in bad.stderr
    bad = cluster.kubectl("apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "durable.dev/v1alpha1", "kind": "WorkflowSchedule", "metadata": {"name": "bad"},
        "spec": {"workflow": "process_order", "schedule": "* * * * *", "concurrencyPolicy": "Sometimes"}}))
    assert bad.returncode != 0 and "must be one of Allow, Forbid, Replace" in bad.stderr
    bad = cluster.kubectl("apply", "-f", "-", check=False, input=json.dumps({
        "apiVersion": "durable.dev/v1alpha1", "kind": "WorkflowSchedule", "metadata": {"name": "bad"},
        "spec": {"workflow": "process_order", "schedule": "every day"}}))
    assert bad.returncode != 0 and "spec.schedule" in bad.stderr
    cluster.apply(run_manifest("immutable", "expense_approval", {"employee_id": "e", "amount": 1}))
    bad = cluster.kubectl("patch", "wfr", "immutable", "--type", "merge", "-p", '{"spec":{"workflow":"x"}}',
                          check=False)
    assert bad.returncode != 0 and "spec.workflow is immutable" in bad.stderr


# ---- helpers of the tests below ----------------------------------------------------------------------

def engine_run(cluster: Cluster, run_id: str) -> dict[str, Any]:
    """The run as the engine's CLI shows it (``durable runs get -o json``), independent of Kubernetes."""
    env = {**os.environ, "DURABLE_DATABASE_URL": cluster.url, "DURABLE_SCHEMA": cluster.schema,
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-m", "durable.cli", "-o", "json", "runs", "get", run_id], env=env,
                         cwd=ROOT, capture_output=True, text=True, timeout=60, check=True).stdout
    return dict(json.loads(out))


REASON = re.compile(r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")  # the API conventions' (metav1.Condition)
RFC3339 = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")


def conditions_of(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    conds = {c["type"]: c for c in st["conditions"]}
    assert len(conds) == len(st["conditions"]) == 2 and set(conds) == {"Accepted", "Succeeded"}, st["conditions"]
    for c in conds.values():
        assert c["status"] in ("True", "False", "Unknown"), c
        assert REASON.match(c["reason"]), c
        assert isinstance(c["message"], str) and c["message"], c
        assert RFC3339.match(c["lastTransitionTime"]), c
    return conds


# ---- TTL, conditions, truncated result, inputFrom a Secret -------------------------------------------

def test_ttl_deletes_the_finished_resource_but_not_the_run(cluster: Cluster) -> None:
    # A run that waits for approval: its runId is read while it is active, however slow the machine.
    cluster.apply(run_manifest("ttl-expense", "expense_approval", {"employee_id": "t1", "amount": 99},
                               ttlSecondsAfterFinished=2))
    cluster.apply(run_manifest("no-ttl-order", "process_order", {"id": "t2", "items": [{"price": 3}]}))
    run_id = cluster.wait_phase("ttl-expense", "Waiting")["runId"]
    cluster.kubectl("patch", "wfr", "ttl-expense", "--type", "merge", "-p",
                    '{"spec":{"inputs":{"manager":"approved"}}}')
    cluster.wait_until(lambda: not cluster.exists("wfr", "ttl-expense"), timeout=30,
                       what="ttlSecondsAfterFinished=2 to delete wfr/ttl-expense")
    gone = time.time()
    # The engine's run outlives its resource: still queryable, finished (not cancelled by the deletion),
    # and it was finished at least the TTL before the resource went.
    run = engine_run(cluster, str(run_id))
    assert run["status"] == "succeeded" and run["result"]["status"] == "reimbursed", run
    finished = datetime.fromisoformat(run["finished_at"].replace("Z", "+00:00")).timestamp()
    assert gone - finished >= 1.9, (gone, run["finished_at"])
    # Without a TTL, a finished run stays.
    assert cluster.wait_phase("no-ttl-order", "Succeeded")
    assert cluster.exists("wfr", "no-ttl-order")


def test_conditions_follow_the_api_conventions(cluster: Cluster) -> None:
    cluster.apply(run_manifest("cond-ok", "process_order", {"id": "c1", "items": [{"price": 1}]}))
    cluster.apply(run_manifest("cond-fail", "k8s_fails", {"why": "the flux capacitor is empty"}))
    cluster.apply(run_manifest("cond-wait", "expense_approval", {"employee_id": "c3", "amount": 7}))

    ok = cluster.wait_phase("cond-ok", "Succeeded")
    conds = conditions_of(ok)
    assert conds["Accepted"]["status"] == "True" and conds["Accepted"]["reason"] == "RunStarted"
    assert ok["runId"] in conds["Accepted"]["message"]
    assert conds["Succeeded"]["status"] == "True" and conds["Succeeded"]["reason"] == "Succeeded"
    assert conds["Succeeded"]["lastTransitionTime"] == ok["finishedAt"]

    failed = cluster.wait_phase("cond-fail", ("Failed", "Succeeded"))
    assert failed["phase"] == "Failed", failed
    conds = conditions_of(failed)
    assert conds["Accepted"]["status"] == "True"  # it ran: the workflow failed, not the start
    assert conds["Succeeded"]["status"] == "False" and conds["Succeeded"]["reason"] == "Failed"
    assert "the flux capacitor is empty" in conds["Succeeded"]["message"]
    assert failed["error"]["step"] == "explode" and failed["error"]["type"] == "ValueError"

    waiting = cluster.wait_phase("cond-wait", "Waiting")
    conds = conditions_of(waiting)
    assert conds["Accepted"]["status"] == "True"
    assert conds["Succeeded"]["status"] == "Unknown" and conds["Succeeded"]["reason"] == "Waiting"
    cluster.kubectl("delete", "wfr", "cond-wait", "--timeout=30s")


def test_large_result_is_marked_truncated(cluster: Cluster) -> None:
    cluster.apply(run_manifest("big-result", "k8s_big_result", {"kib": 24}))
    cluster.apply(run_manifest("small-result", "k8s_big_result", {"kib": 8}))
    big = cluster.wait_phase("big-result", ("Succeeded", "Failed"))
    assert big["phase"] == "Succeeded", big
    assert big["resultTruncated"] is True and big["resultBytes"] > 24 * 1024
    assert big.get("result") is None, "a result over 16 KiB must not be copied into status"
    assert conditions_of(big)["Succeeded"]["status"] == "True"
    # The whole result is read with the client.
    assert len(engine_run(cluster, big["runId"])["result"]["blob"]) == 24 * 1024
    small = cluster.wait_phase("small-result", "Succeeded")
    assert not small.get("resultTruncated") and len(small["result"]["blob"]) == 8 * 1024
    assert small["resultBytes"] > 8 * 1024


def test_input_from_a_secret(cluster: Cluster) -> None:
    order = json.dumps({"id": "s-1", "items": [{"price": 4}, {"price": 6}]})
    cluster.kubectl("create", "secret", "generic", "order-secret", f"--from-literal=input.json={order}",
                    "--from-literal=broken.json={not json")
    cluster.apply(run_manifest("from-secret", "process_order",
                               inputFrom={"secretKeyRef": {"name": "order-secret", "key": "input.json"}}))
    cluster.apply(run_manifest("from-bad-secret", "process_order",
                               inputFrom={"secretKeyRef": {"name": "order-secret", "key": "broken.json"}}))
    st = cluster.wait_phase("from-secret", ("Succeeded", "Failed"))
    assert st["phase"] == "Succeeded", st
    assert st["result"]["order_id"] == "s-1" and st["result"]["total"] == 10
    assert engine_run(cluster, st["runId"])["input"] == json.loads(order)
    assert "input" not in cluster.get("wfr", "from-secret")["spec"]
    bad = cluster.wait_phase("from-bad-secret", ("Failed", "Succeeded"))
    assert bad["phase"] == "Failed" and bad["error"]["type"] == "InvalidInput", bad
    assert "order-secret" in bad["message"] and "not JSON" in bad["message"]
    assert {c["type"]: c["reason"] for c in bad["conditions"]}["Accepted"] == "InvalidInput"
