"""Watch streams that end and expire: the operator keeps working across 410 Gone.

This module runs its own API server, without the watch cache and with etcd compacted every second, and
an operator whose watches end every 2 s. A watch resumed from a resource version that etcd has
compacted meanwhile is answered with 410 Gone; Kopf must list again and carry on.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import pytest

from conftest import LEADER_PRIORITY, Cluster, run_manifest, start_kube

pytestmark = [pytest.mark.k8s, pytest.mark.slow]
# Kopf's message when a watch is answered with 410 Gone
RESTARTED = "Restarting the watch-stream for workflowruns.v1alpha1.durable.dev"


@pytest.fixture(scope="module")
def cluster(database_url: str, schema: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    kube = start_kube("--watch-cache=false", "--etcd-compaction-interval=1s")
    c = Cluster(kube, database_url, schema, tmp_path_factory.mktemp("k8s-expiry"))
    try:
        c.start_worker()
        c.start_operator("--priority", str(LEADER_PRIORITY), "--watch-timeout", "2", "--log-level", "DEBUG")
        yield c
    finally:
        c.stop()
        kube.stop()


def test_operator_survives_410_gone(cluster: Cluster) -> None:
    operator = cluster.operators[0]
    cluster.apply(run_manifest("expiry-a", "payment_flow", {"order_id": "ea"}))
    cluster.wait_phase("expiry-a", "Waiting")

    # Other writes move etcd's revision on while no WorkflowRun changes; compaction then drops the
    # revision the operator's WorkflowRun watch would resume from.
    deadline = time.monotonic() + 45
    i = 0
    while RESTARTED not in operator.log_tail(5000):
        assert time.monotonic() < deadline, "no watch of the operator was answered with 410 Gone"
        cluster.kubectl("create", "configmap", f"churn-{i}", f"--from-literal=i={i}")
        i += 1
        time.sleep(0.2)

    cluster.kubectl("patch", "wfr", "expiry-a", "--type", "merge", "-p",
                    json.dumps({"spec": {"events": {"e1": {"name": "payment.failed", "payload": None}}}}))
    assert cluster.wait_phase("expiry-a", "Succeeded")["result"]["status"] == "cancelled"
    cluster.apply(run_manifest("expiry-b", "process_order", {"id": "eb", "items": [{"price": 2}]}))
    cluster.wait_phase("expiry-b", "Succeeded")
    for name in ("expiry-a", "expiry-b"):
        uid = cluster.get("wfr", name)["metadata"]["uid"]
        assert cluster.sql("SELECT count(*) FROM executions WHERE idempotency_key = %s", uid)[0][0] == 1, name
