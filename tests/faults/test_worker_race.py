"""Two worker processes competing for the same tasks (``FOR UPDATE SKIP LOCKED``): every task is
leased by exactly one of them, so every step body runs once and is recorded once (DESIGN §3)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from durable import Client
from tests.faults.helpers import duplicate_successes, side_counts, sql, wait_all, wait_started, worker

RUNS = 100
STEPS = ("r1", "r2", "r3")


@pytest.mark.slow
def test_two_workers_race_for_the_same_tasks(database_url: str, fault_schema: str, fault_client: Client,
                                             tmp_path: Path) -> None:
    side_log = tmp_path / "side.log"
    workers = [worker(database_url, fault_schema, tmp_path / f"{name}.log", name=name) for name in ("race-a", "race-b")]
    try:
        for w in workers:
            w.start()
        for w in workers:
            wait_started(w)
        # All first steps fall due at the same instant, so both workers wake on the timer together and
        # compete for the same 100 rows (each leases up to its 10 free slots per round).
        due = datetime.now(UTC) + timedelta(seconds=1.5)
        run_ids = [fault_client.start("faults_race", {"log": str(side_log), "key": f"r{i}"}, scheduled_at=due)
                   for i in range(RUNS)]
        runs = wait_all(fault_client, run_ids, timeout=60)
        for w in workers:
            assert w.proc is not None and w.proc.poll() is None, "a worker died during the race"
    finally:
        for w in workers:
            w.stop()

    failed = {rid: (r.status, r.error) for rid, r in runs.items() if r.status != "succeeded"}
    assert not failed, failed
    assert all(r.result["done"] for r in runs.values())

    # Recorded exactly once: three succeeded step rows per run, no other attempt rows at all.
    assert duplicate_successes(database_url, fault_schema) == []
    per_run = sql(database_url, fault_schema,
                  "SELECT run_id, count(*) FILTER (WHERE status = 'succeeded'), count(*) FROM steps GROUP BY 1")
    assert len(per_run) == RUNS and all(ok == 3 and total == 3 for _, ok, total in per_run), per_run
    for run in runs.values():
        assert [s.name for s in run.steps] == list(STEPS)

    # Ran exactly once: the side log has one line per step per run (no lease ever expired or was shared).
    counts = side_counts(side_log)
    assert sum(counts.values()) == RUNS * len(STEPS), sum(counts.values())
    assert all(counts[(f"r{i}", s, "run")] == 1 for i in range(RUNS) for s in STEPS), counts.most_common(3)

    # It really was a race: both workers won some of the tasks.
    owners = sql(database_url, fault_schema, "SELECT split_part(worker, ':', 1), count(*) FROM steps GROUP BY 1")
    assert {name for name, _ in owners} == {"race-a", "race-b"}, owners


@pytest.mark.slow
def test_step_longer_than_its_lease_is_renewed_not_stolen(database_url: str, fault_schema: str,
                                                          fault_client: Client, tmp_path: Path) -> None:
    """Steps running for 5 s under a 3 s lease, while both workers (with free slots) keep polling the
    queue: each worker renews the leases of its running steps, so none is taken over and no body runs twice."""
    side_log = tmp_path / "side.log"
    workers = [worker(database_url, fault_schema, tmp_path / f"{name}.log", name=name,
                      env={"DURABLE_POLL_MAX_MS": "200"}) for name in ("long-a", "long-b")]
    try:
        for w in workers:
            w.start()
        for w in workers:
            wait_started(w)
        run_ids = [fault_client.start("faults_long", {"log": str(side_log), "key": f"l{i}", "hold_s": 5})
                   for i in range(4)]
        runs = wait_all(fault_client, run_ids, timeout=30)
    finally:
        for w in workers:
            w.stop()
    assert all(r.status == "succeeded" for r in runs.values()), {r.id: r.error for r in runs.values()}
    counts = side_counts(side_log)
    assert all(counts[(f"l{i}", "hold", phase)] == 1 for i in range(4) for phase in ("start", "end")), counts
    assert duplicate_successes(database_url, fault_schema) == []
    assert all([(s.name, s.status) for s in r.steps] == [("hold", "succeeded")] for r in runs.values())
