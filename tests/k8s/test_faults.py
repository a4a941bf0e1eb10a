"""Faults: the operator SIGKILLed mid-run, the API server restarted, two operator replicas."""

from __future__ import annotations

import json

import pytest

from conftest import LEADER_PRIORITY, Cluster, OperatorProcess, run_manifest

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
ORDER = {"id": "f", "items": [{"price": 2}]}


def _one_run_per_resource(cluster: Cluster, names: list[str]) -> None:
    for name in names:
        uid = cluster.get("wfr", name)["metadata"]["uid"]
        assert cluster.sql("SELECT count(*) FROM executions WHERE idempotency_key = %s", uid)[0][0] == 1, name


STARTED = "durable_operator_runs_started_total"
PATCHES = "durable_operator_status_patches_total"
ACTIVE = "durable_operator_active"


def _apply_and_finish(cluster: Cluster, names: list[str]) -> None:
    cluster.apply("\n---\n".join(run_manifest(n, "process_order", ORDER) for n in names))
    for n in names:
        cluster.wait_phase(n, "Succeeded")
    _one_run_per_resource(cluster, names)


def _settled(cluster: Cluster, leader: OperatorProcess, standbys: list[OperatorProcess]) -> None:
    def settled() -> bool:
        return leader.metric(ACTIVE) == 1 and all(op.metric(ACTIVE) == 0 for op in standbys)

    cluster.wait_until(settled, timeout=30, what="peering to settle on one active replica")


def test_two_replicas_only_one_acts(cluster: Cluster) -> None:
    first = cluster.operators[0]
    # A lower-priority replica starts paused (Kopf holds its watches until it has read the peering
    # object, and the reflector starts on standby), so it never lists, starts or patches anything.
    second = cluster.start_operator("--priority", str(LEADER_PRIORITY - 50))
    _settled(cluster, first, [second])
    names = [f"replica-{i}" for i in range(6)]
    _apply_and_finish(cluster, names)
    assert first.metric(STARTED) >= len(names)
    assert second.metric(STARTED) == 0, "the standby replica must not start runs"
    assert second.metric(PATCHES) == 0, "the standby replica must not patch statuses"

    # A higher-priority replica takes over: the old leader pauses and, once it has, does nothing more.
    third = cluster.start_operator("--priority", str(LEADER_PRIORITY + 50))
    cluster.wait_until(lambda: "Pausing operations" in first.log_tail(400), timeout=30,
                       what="the old leader to pause in favour of the new one")
    _settled(cluster, third, [first, second])
    before = {op: (op.metric(STARTED), op.metric(PATCHES)) for op in (first, second)}
    names = [f"takeover-{i}" for i in range(4)]
    _apply_and_finish(cluster, names)
    assert third.metric(STARTED) >= len(names) and third.metric(PATCHES) >= len(names)
    for op in (first, second):
        assert (op.metric(STARTED), op.metric(PATCHES)) == before[op], "a standby replica acted"

    for op in (third, second):  # a stopping replica leaves the peering at once: the first leads again
        op.stop()
        cluster.operators.remove(op)
    _settled(cluster, first, [])


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
    # A higher priority than the dead replica's: its peering entry stays "alive" for its lifetime (60 s).
    cluster.start_operator("--priority", str(LEADER_PRIORITY + 10))
    for n in names:
        cluster.wait_phase(n, "Succeeded", timeout=120)
    _one_run_per_resource(cluster, names)
    assert cluster.sql("SELECT count(*) FROM deliveries")[0][0] == 3


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
