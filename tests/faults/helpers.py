"""Helpers shared by the fault tests: side logs, worker readiness and direct SQL on a test schema."""

from __future__ import annotations

import time
from collections import Counter
from pathlib import Path
from typing import Any

import psycopg

from durable import Client, Run
from tests.support import WorkerProcess, wait_until

APPS = ["tests.faults.apps"]


def side_lines(path: Path) -> list[tuple[float, str, str, str]]:
    """``(time, key, step, phase)`` for every step-body execution written by ``tests.faults.apps.side``."""
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        ts, key, step, phase = line.split(" ")
        out.append((float(ts), key, step, phase))
    return out


def side_counts(path: Path) -> Counter[tuple[str, str, str]]:
    """How many times each ``(key, step, phase)`` happened."""
    return Counter((key, step, phase) for _, key, step, phase in side_lines(path))


def worker(url: str, schema: str, log_path: Path, *, name: str, queues: list[str] | None = None,
           env: dict[str, str] | None = None) -> WorkerProcess:
    """A ``durable worker`` subprocess serving ``tests.faults.apps``, named ``name``."""
    return WorkerProcess(url, schema, APPS, queues=queues, log_path=log_path,
                         env={"DURABLE_WORKER_NAME": name, **(env or {})})


def wait_started(proc: WorkerProcess, timeout: float = 30.0) -> None:
    """Until the worker logged that its lease loop runs (after migrating and registering workflows)."""
    log = proc.log_path
    assert log is not None

    def started() -> bool:
        assert proc.proc is not None
        if proc.proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.proc.returncode}:\n{log.read_text()}")
        return log.exists() and "worker started" in log.read_text()
    wait_until(started, timeout=timeout, interval=0.05, what="worker started")


def sql(url: str, schema: str, query: str, params: dict[str, Any] | None = None) -> list[tuple[Any, ...]]:
    """Run one statement with ``schema`` first on the search path; returns its rows (or [])."""
    with psycopg.connect(url, autocommit=True, options=f"-c search_path={schema}") as conn:
        cur = conn.execute(query, params or {})
        return [tuple(r) for r in cur.fetchall()] if cur.description else []


def duplicate_successes(url: str, schema: str) -> list[tuple[Any, ...]]:
    """Steps recorded as succeeded more than once for the same run: must always be empty."""
    return sql(url, schema, "SELECT run_id, name, count(*) FROM steps WHERE status = 'succeeded' "
                            "GROUP BY 1, 2 HAVING count(*) > 1")


def wait_all(client: Client, run_ids: list[str], timeout: float) -> dict[str, Run]:
    """Wait for every run to finish (``RunTimeout`` past ``timeout`` in all); returns ``{run_id: Run}``."""
    deadline = time.monotonic() + timeout
    return {rid: client.wait(rid, timeout=max(deadline - time.monotonic(), 0.1)) for rid in run_ids}
