"""WorkflowRun end to end against a real API server, driven by kubectl as a user drives it."""

from __future__ import annotations

import json

import pytest
from tests.support import ROOT

from conftest import Cluster, run_manifest

pytestmark = pytest.mark.k8s
EXAMPLES = ROOT / "examples" / "k8s"


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
