"""A worker SIGKILLed while its free slots are offered to new runs (push dispatch, migration 0012).

Its offers stay in the table, so a run started right after the kill may be pushed to the dead
worker. Nothing is lost: that run's task is an ordinary lease, which expires and is taken by a live
worker's poll, and its step runs exactly once. Once the dead worker's heartbeat is stale, its
offers are no longer taken at all: new runs go to the live worker."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from durable import Client
from durable.worker import OFFER_ALIVE_SECONDS
from tests.faults.helpers import duplicate_successes, side_counts, side_lines, sql, wait_started, worker
from tests.support import wait_until


def _offered(url: str, schema: str, name: str) -> int:
    rows = sql(url, schema, "SELECT count(*) FROM dispatch_slots WHERE free AND owner LIKE %(o)s",
               {"o": f"{name}:%"})
    return int(rows[0][0])


@pytest.mark.slow
def test_a_run_pushed_to_a_killed_worker_runs_once_elsewhere(database_url: str, fault_schema: str,
                                                            fault_client: Client, tmp_path: Path) -> None:
    side_log = tmp_path / "side.log"
    dead = worker(database_url, fault_schema, tmp_path / "dead.log", name="pod-dead", queues=["default=2"])
    live = worker(database_url, fault_schema, tmp_path / "live.log", name="pod-live", queues=["default=2"])
    try:
        dead.start()
        wait_started(dead)
        wait_until(lambda: _offered(database_url, fault_schema, "pod-dead") == 2, what="the slots offered")
        dead.kill()
        assert dead.proc is not None and dead.proc.returncode == -signal.SIGKILL

        # Within the dead worker's heartbeat: pushed to it, leased to it, running in name only.
        stranded = fault_client.start("faults_quick", {"log": str(side_log), "key": "stranded"})
        (owner, expires), = sql(database_url, fault_schema, "SELECT lease_owner, lease_expires_at FROM tasks "
                                "WHERE run_id = %(r)s", {"r": stranded})
        assert owner.startswith("pod-dead:") and fault_client.get(stranded).status == "running"

        live.start()
        wait_started(live)
        run = fault_client.wait(stranded, timeout=30)
        assert run.status == "succeeded", run.error
        assert run.steps[0].worker.startswith("pod-live:")
        [ran_at] = [ts for ts, key, _, _ in side_lines(side_log) if key == "stranded"]
        assert ran_at >= expires.timestamp(), "run before the dead worker's lease expired"

        # Past the dead worker's heartbeat: its offers, still marked free, are passed over.
        (alive_until,), = sql(database_url, fault_schema, "SELECT alive_until FROM dispatch_workers "
                              "WHERE owner LIKE 'pod-dead:%%'")
        assert alive_until.timestamp() <= time.time() + OFFER_ALIVE_SECONDS
        time.sleep(max(0.0, alive_until.timestamp() - time.time() + 0.2))
        assert _offered(database_url, fault_schema, "pod-dead") >= 1
        fresh = [fault_client.start("faults_quick", {"log": str(side_log), "key": f"fresh{i}"}) for i in range(4)]
        for run_id in fresh:
            run = fault_client.wait(run_id, timeout=10)
            assert run.status == "succeeded", run.error
            assert run.steps[0].worker.startswith("pod-live:")
    finally:
        dead.kill()
        live.stop()

    counts = side_counts(side_log)
    assert counts == {(key, "only", "run"): 1 for key in ["stranded", "fresh0", "fresh1", "fresh2", "fresh3"]}
    assert duplicate_successes(database_url, fault_schema) == []
    assert sql(database_url, fault_schema, "SELECT count(*) FROM tasks") == [(0,)]
