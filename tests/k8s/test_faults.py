"""Faults: the operator SIGKILLed mid-run, the API server restarted, two operator replicas."""

from __future__ import annotations

import json

import pytest

from conftest import Cluster, run_manifest

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
ORDER = {"id": "f", "items": [{"price": 2}]}


def _one_run_per_resource(cluster: Cluster, names: list[str]) -> None:
    for name in names:
        uid = cluster.get("wfr", name)["metadata"]["uid"]
        assert cluster.sql("SELECT count(*) FROM executions WHERE idempotency_key = %s", uid)[0][0] == 1, name


def test_two_replicas_only_one_acts(cluster: Cluster) -> None:
    second = cluster.start_operator()
    first = cluster.operators[0]
    # Kopf peering settles within a keep-alive round trip: one replica logs that it pauses.
    cluster.wait_until(lambda: any("Pausing operations" in op.log_tail(400) for op in (first, second)),
                       timeout=30, what="one replica to pause in favour of the other")
    names = [f"replica-{i}" for i in range(6)]
    cluster.apply("\n---\n".join(run_manifest(n, "process_order", ORDER) for n in names))
    for n in names:
        cluster.wait_phase(n, "Succeeded")
    _one_run_per_resource(cluster, names)

    def acted(op: object) -> float:
        m = op.metrics()  # type: ignore[attr-defined]
        return sum(v for k, v in m.items() if k.startswith("durable_operator_runs_started_total"))

    started = [acted(first), acted(second)]
    assert sorted(started)[0] == 0 and sorted(started)[1] >= len(names), started
    standby = first if acted(first) == 0 else second
    patches = sum(v for k, v in standby.metrics().items() if k.startswith("durable_operator_status_patches_total"))
    assert patches == 0, "the standby replica must not patch statuses"
    second.stop()
    cluster.operators.remove(second)


def test_sigkill_operator_mid_run(cluster: Cluster) -> None:
    op = cluster.operators[0]
    names = [f"kill-{i}" for i in range(6)]
    manifests = [run_manifest(n, "expense_approval", {"employee_id": n, "amount": 3}) if i % 2 else
                 run_manifest(n, "process_order", ORDER) for i, n in enumerate(names)]
    cluster.apply("\n---\n".join(manifests))
    op.kill()  # some runs started, some not, some statuses not yet written
    cluster.operators.remove(op)
    for i, n in enumerate(names):
        if i % 2:  # the input goes in while no operator is running
            cluster.kubectl("patch", "wfr", n, "--type", "merge", "-p", '{"spec":{"inputs":{"manager":"approved"}}}')
    cluster.start_operator()
    for n in names:  # if the dead replica had the higher priority, its peering entry lapses first (60 s)
        cluster.wait_phase(n, "Succeeded", timeout=120)
    _one_run_per_resource(cluster, names)
    assert cluster.sql("SELECT count(*) FROM k8s_deliveries")[0][0] == 3


def test_api_server_restart(cluster: Cluster) -> None:
    cluster.apply(run_manifest("restart-a", "payment_flow", {"order_id": "ra"}))
    cluster.wait_phase("restart-a", "Waiting")
    cluster.kube.restart()
    cluster.apply(run_manifest("restart-b", "process_order", ORDER))
    cluster.kubectl("patch", "wfr", "restart-a", "--type", "merge", "-p",
                    json.dumps({"spec": {"events": {"e1": {"name": "payment.failed", "payload": None}}}}))
    assert cluster.wait_phase("restart-a", "Succeeded")["result"]["status"] == "cancelled"
    cluster.wait_phase("restart-b", "Succeeded")
    cluster.kube.restart()  # and once more while idle: watches must reconnect again
    cluster.apply(run_manifest("restart-c", "process_order", ORDER))
    cluster.wait_phase("restart-c", "Succeeded")
    _one_run_per_resource(cluster, ["restart-a", "restart-b", "restart-c"])
