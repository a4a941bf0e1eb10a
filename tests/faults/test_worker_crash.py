"""A worker SIGKILLed in the middle of a step: the step runs again elsewhere once its lease expires,
and every step's result is recorded exactly once (DESIGN §3: at least once, recorded exactly once)."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from durable import Client
from tests.faults.helpers import duplicate_successes, side_counts, side_lines, sql, wait_started, worker
from tests.support import wait_until


@pytest.mark.slow
@pytest.mark.parametrize("same_name", [False, True], ids=["new-pod", "same-pod-name"])
def test_sigkill_mid_step_reruns_it_once_and_records_once(database_url: str, fault_schema: str,
                                                          fault_client: Client, tmp_path: Path,
                                                          same_name: bool) -> None:
    side_log, gate = tmp_path / "side.log", tmp_path / "gate"
    first = worker(database_url, fault_schema, tmp_path / "w1.log", name="pod-a", queues=["default=4"])
    # A restarted pod (StatefulSet, or a Deployment pod restarted in place) comes back with the same
    # DURABLE_WORKER_NAME; leases must not depend on it.
    second = worker(database_url, fault_schema, tmp_path / "w2.log", name="pod-a" if same_name else "pod-b",
                    queues=["default=4"])
    try:
        first.start()
        wait_started(first)
        run_id = fault_client.start("faults_crash", {"log": str(side_log), "key": "k", "gate": str(gate)})
        wait_until(lambda: side_counts(side_log)[("k", "two", "start")] == 1, timeout=20,
                   what="step two running on the first worker")
        (expires, owner), = sql(database_url, fault_schema, "SELECT lease_expires_at, lease_owner FROM tasks "
                                "WHERE run_id = %(r)s AND kind = 'step'", {"r": run_id})
        assert owner.startswith("pod-a:") and fault_client.get(run_id).current_step == "two"

        first.kill()
        assert first.proc is not None and first.proc.returncode == -signal.SIGKILL
        killed_at = time.time()
        gate.touch()  # the re-run may finish step two
        second.start()  # at once, while the dead worker's lease is still live

        run = fault_client.wait(run_id, timeout=30)
        log_text = (tmp_path / "w2.log").read_text()
        assert run.status == "succeeded", (run.error, log_text)
        assert run.result["two_done"] and run.result["three_done"]
    finally:
        first.kill()
        second.stop()

    counts = side_counts(side_log)
    assert counts[("k", "one", "run")] == 1, counts
    assert counts[("k", "two", "start")] == 2, counts  # the killed attempt and the re-run
    assert counts[("k", "two", "end")] == 1, counts
    assert counts[("k", "three", "run")] == 1, counts

    # The re-run started only after the dead worker's lease had expired (never two live attempts).
    rerun_at = [ts for ts, _, step, phase in side_lines(side_log) if (step, phase) == ("two", "start")][1]
    assert rerun_at > killed_at
    assert rerun_at >= expires.timestamp(), (rerun_at, expires)

    # Exactly one checkpoint per step; the killed attempt left no row at all.
    assert [(s.name, s.kind, s.status) for s in run.steps] == [
        ("one", "step", "succeeded"), ("two", "step", "succeeded"), ("three", "step", "succeeded")]
    assert run.steps[0].worker != run.steps[1].worker, "step two must be recorded by the second process"
    assert all((s.worker or "").startswith("pod-a:" if same_name else ("pod-a:", "pod-b:")) for s in run.steps)
    assert duplicate_successes(database_url, fault_schema) == []
    assert sql(database_url, fault_schema, "SELECT count(*) FROM tasks") == [(0,)]
