"""Test support shared by every tier: the real PostgreSQL, schemas, in-process and subprocess workers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn

import psycopg

from durable.settings import DatabaseSettings, LimitSettings, Settings, WorkerSettings

ROOT = Path(__file__).resolve().parent.parent
# Child processes import this checkout's packages, even where the virtualenv's editable install points
# at another checkout (a git worktree).
CHILD_PYTHONPATH = os.pathsep.join(str(p) for p in (ROOT / "runtime", ROOT / "operator", ROOT))


def missing_binaries(exc: Exception) -> NoReturn:
    """Test binaries are absent: on CI a missing install step must be loud, not a silently skipped suite."""
    import pytest

    if os.environ.get("CI") == "true":
        pytest.fail(str(exc))
    pytest.skip(str(exc))


def new_schema(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(psycopg.sql.Identifier(schema)))


def settings_for(url: str, schema: str, **worker: Any) -> Settings:
    limits = LimitSettings(max_context_bytes=worker.pop("max_context_bytes", 1 << 20))
    base = {"lease_seconds": 5, "poll_max_ms": 500, "name": "test-worker"}
    return Settings(db=DatabaseSettings(url=url, schema=schema), limits=limits,
                    worker=WorkerSettings(**{**base, **worker}))


def wait_until(pred: Callable[[], Any], timeout: float = 15.0, interval: float = 0.02, what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


class ChildProcess:
    """A process a test starts and must be able to stop politely (SIGTERM) or kill (SIGKILL)."""

    proc: subprocess.Popen[bytes] | None = None
    stop_grace: float = 10.0

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(self.stop_grace)
            except subprocess.TimeoutExpired:
                self.kill()


class WorkerProcess(ChildProcess):
    """``durable worker`` as a real child process, the way a Deployment runs it."""

    def __init__(self, url: str, schema: str, apps: list[str], queues: list[str] | None = None,
                 env: dict[str, str] | None = None, log_path: Path | None = None) -> None:
        self.args = [sys.executable, "-m", "durable.cli", "worker"]
        for app in apps:
            self.args += ["--app", app]
        for queue in queues or []:
            self.args += ["--queue", queue]
        self.env = {**os.environ, "DURABLE_DATABASE_URL": url, "DURABLE_SCHEMA": schema,
                    "DURABLE_LEASE_SECONDS": "3", "DURABLE_POLL_MAX_MS": "500", "PYTHONPATH": CHILD_PYTHONPATH,
                    **(env or {})}
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=out, stderr=out)
        return self

    def __enter__(self) -> WorkerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def record_rounds(worker: Any, monkeypatch: Any) -> list[str]:
    """The names of the threads that run ``worker``'s lease rounds from now on, in order."""
    rounds: list[str] = []
    original = worker._lease_round

    def recording() -> float:
        rounds.append(threading.current_thread().name)
        return float(original())

    monkeypatch.setattr(worker, "_lease_round", recording)
    return rounds
