"""PostgreSQL restarted (fast shutdown, then start) while runs are in flight: the worker process survives
and reconnects promptly, every run succeeds, and every step is recorded exactly once (DESIGN §3, §8).
A client that was open across the restart keeps working too."""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from durable import Client, RunTimeout
from tests.faults.helpers import duplicate_successes, side_counts, side_lines, sql, wait_all, wait_started, worker
from tests.support import new_schema, wait_until

RUNS = 20
# Once PostgreSQL is back, the remaining ~2 s of work plus lease expiry and reconnect back-off must
# fit in this; a worker that sits out its connection pool's 60 s timeout does not.
RECOVERY_S = 20.0


@pytest.fixture
def own_postgres() -> Iterator[Any]:
    """A PostgreSQL of our own (not the session's): these tests stop and restart it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver

    base = Path(tempfile.mkdtemp(prefix="durable-fault-pg-"))
    srv = pgserver.get_server(base, cleanup_mode="delete")  # type: ignore[attr-defined]
    try:
        yield srv
    finally:
        srv.cleanup()
        shutil.rmtree(base, ignore_errors=True)


def _stop_fast(srv: Any) -> float:
    """Fast shutdown (SIGINT to the postmaster): clients are disconnected, open transactions abort.
    (pg_ctl refuses to run as root, and the postmaster belongs to pgserver's own user then.)
    Returns when the shutdown began."""
    pid = srv.get_pid()
    stopped_at = time.time()
    os.kill(pid, signal.SIGINT)
    psutil.Process(pid).wait(20)
    return stopped_at


def _start_again(srv: Any) -> None:
    with srv._lock:  # pgserver's inter-process lock, as its own get_server() takes it
        srv.ensure_postgres_running()


def _ends(side_log: Path) -> int:
    return sum(n for (_, _, phase), n in side_counts(side_log).items() if phase == "end")


@pytest.mark.slow
@pytest.mark.parametrize("outage", [1.5, 5.0], ids=["short-outage", "outage-longer-than-lease"])
def test_postgres_restart_mid_run(own_postgres: Any, tmp_path: Path, outage: float) -> None:
    url = str(own_postgres.get_uri())
    schema = new_schema("f")
    side_log, worker_log = tmp_path / "side.log", tmp_path / "worker.log"
    proc = worker(url, schema, worker_log, name="pg-restart", queues=["default=4"])
    client = Client(url, schema=schema)
    try:
        proc.start()
        wait_started(proc)
        # 20 runs x 3 steps x ~200 ms on 4 slots: about 3 s of work, so the restart lands mid-way. Step
        # lengths differ per run so the slots drift apart and the stop finds steps in progress.
        run_ids = [client.start("faults_slow3", {"log": str(side_log), "key": f"p{i}", "ms": 150 + 25 * (i % 5)})
                   for i in range(RUNS)]
        wait_until(lambda: _ends(side_log) >= 14, timeout=30, what="a fifth of the steps done")
        client.close()

        stopped_at = _stop_fast(own_postgres)
        at_stop = _ends(side_log)
        assert at_stop < 3 * RUNS - 8, f"too late: {at_stop} steps already done when PostgreSQL stopped"
        time.sleep(outage)
        assert proc.proc is not None and proc.proc.poll() is None, "the worker died with the database"
        _start_again(own_postgres)

        client = Client(url, schema=schema)
        try:
            runs = wait_all(client, run_ids, timeout=RECOVERY_S)
        except RunTimeout:
            stuck = [r.status for r in (client.get(rid) for rid in run_ids) if not r.finished]
            events = [line for line in worker_log.read_text().splitlines() if line.startswith("{")]
            pytest.fail(f"{len(stuck)} runs ({', '.join(sorted(set(stuck)))}) still unfinished {RECOVERY_S:g}s "
                        f"after PostgreSQL came back: the worker did not reconnect. Worker events:\n"
                        + "\n".join(events[-8:]))
        assert all(r.status == "succeeded" for r in runs.values()), (
            {rid: (r.status, r.error) for rid, r in runs.items() if r.status != "succeeded"})
        assert proc.proc.poll() is None, f"the worker exited after the restart:\n{worker_log.read_text()[-3000:]}"
    finally:
        client.close()
        proc.stop()

    # Each step recorded exactly once per run: one succeeded row, and its output is the step's own.
    assert duplicate_successes(url, schema) == []
    rows = sql(url, schema, "SELECT run_id::text, name, count(*) FILTER (WHERE status = 'succeeded') "
                            "FROM steps GROUP BY 1, 2")
    assert len(rows) == 3 * RUNS and all(n == 1 for *_, n in rows), rows
    for rid, run in runs.items():
        assert [s.name for s in run.steps if s.status == "succeeded"] == ["s1", "s2", "s3"], rid
        assert run.result["s1"] and run.result["s2"] and run.result["s3"]
    # The outage really hit running steps: some step body started before the shutdown, and its
    # result was recorded only after the restart (by the same attempt or by a re-run).
    started_before = {(key, step) for ts, key, step, phase in side_lines(side_log)
                      if phase == "start" and ts < stopped_at}
    straddling = [(run.input["key"], s.name) for run in runs.values() for s in run.steps
                  if (run.input["key"], s.name) in started_before and s.finished_at.timestamp() > stopped_at]
    assert straddling, "no step was in flight when PostgreSQL went down"
    # At least once: every step body finished at least once (re-runs after the outage are allowed).
    counts = side_counts(side_log)
    assert all(counts[(f"p{i}", s, "end")] >= 1 for i in range(RUNS) for s in ("s1", "s2", "s3")), counts
    assert sql(url, schema, "SELECT count(*) FROM tasks") == [(0,)]


@pytest.mark.slow
def test_client_open_across_restart_keeps_working(own_postgres: Any) -> None:
    """An application's (or the operator's) long-lived Client: after PostgreSQL restarts, its next
    calls succeed; the pooled connections that died with the old server are not handed out."""
    url = str(own_postgres.get_uri())
    schema = new_schema("f")
    client = Client(url, schema=schema)
    try:
        with client._pool.connection() as c1, client._pool.connection() as c2:  # two pooled connections
            c1.execute("SELECT 1")
            c2.execute("SELECT 1")
        assert client.list() == []
        _stop_fast(own_postgres)
        time.sleep(0.5)
        _start_again(own_postgres)
        for _ in range(3):
            assert client.list() == []
            assert client.schedules() == []
    finally:
        client.close()
