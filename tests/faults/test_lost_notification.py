"""Work that becomes ready without a ``NOTIFY durable_tasks`` still runs: workers also poll, with a
bounded back-off, so a lost notification costs latency, never a run (DESIGN §3)."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from durable import Client
from tests.faults.helpers import side_counts, sql, wait_started, worker

POLL_MS = 300


@pytest.mark.slow
def test_polling_delivers_what_notifications_missed(database_url: str, fault_schema: str, fault_client: Client,
                                                    tmp_path: Path) -> None:
    side_log = tmp_path / "side.log"
    proc = worker(database_url, fault_schema, tmp_path / "worker.log", name="poller",
                  env={"DURABLE_POLL_MAX_MS": str(POLL_MS)})
    try:
        proc.start()
        wait_started(proc)

        # 1. A lost notification. The run starts an hour in the future: its NOTIFY wakes the worker, which
        # finds nothing due and goes back to waiting. Then the task is made due by a bare UPDATE, which
        # sends no notification at all: only a poll can find it.
        lost = fault_client.start("faults_quick", {"log": str(side_log), "key": "lost"},
                                  scheduled_at=datetime.now(UTC) + timedelta(hours=1))
        time.sleep(1.0)  # the worker has consumed the start notification and is idle
        assert fault_client.get(lost).status == "pending" and side_counts(side_log)["lost", "only", "run"] == 0
        made_due = time.time()
        assert sql(database_url, fault_schema, "UPDATE tasks SET due_at = now() WHERE run_id = %(r)s RETURNING id",
                   {"r": lost})
        run = fault_client.wait(lost, timeout=10)
        assert run.status == "succeeded", run.error
        latency = run.result["ran_at"] - made_due
        assert latency < 1.5, f"a due task waited {latency:.2f}s with a {POLL_MS} ms poll"

        # 2. A timer: nothing at all is sent when it falls due; the worker must wake for it by itself.
        due = datetime.now(UTC) + timedelta(seconds=1)
        timer = fault_client.start("faults_quick", {"log": str(side_log), "key": "timer"}, scheduled_at=due)
        run = fault_client.wait(timer, timeout=10)
        assert run.status == "succeeded", run.error
        late = run.result["ran_at"] - due.timestamp()
        assert 0 <= late < 1.0, f"timer ran {late:+.2f}s after its due time"
    finally:
        proc.stop()
    assert side_counts(side_log) == {("lost", "only", "run"): 1, ("timer", "only", "run"): 1}
