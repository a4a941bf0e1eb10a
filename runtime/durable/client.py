"""``durable.Client`` and ``durable.AsyncClient``: start, inspect, signal and wait for runs.

Used by applications, the CLI and the Kubernetes operator. Both clients share everything but I/O:
the async one runs the same code on a thread.
"""

from __future__ import annotations

import asyncio
import builtins
import threading
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import psycopg

from . import metrics, store
from .db import connect, make_pool, q, resolve_url
from .dsl import REGISTRY
from .errors import RunNotFound, RunTimeout
from .jsonutil import dumps
from .migrate import migrate
from .models import FINISHED, Run, RunStatus
from .settings import DatabaseSettings, Settings


class _RunWatcher:
    """One LISTEN connection per client, fanning ``durable_finished`` notifications (sent when a run
    reaches a terminal status) out to waiters."""

    def __init__(self, url: str, settings: DatabaseSettings) -> None:
        self._url = url
        self._settings = settings
        self._waiters: dict[str, list[threading.Event]] = defaultdict(list)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="durable-run-watcher", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def subscribe(self, run_id: str) -> threading.Event:
        ev = threading.Event()
        with self._lock:
            self._waiters[run_id].append(ev)
        return ev

    def unsubscribe(self, run_id: str, ev: threading.Event) -> None:
        with self._lock:
            evs = self._waiters.get(run_id, [])
            if ev in evs:
                evs.remove(ev)
            if not evs:
                self._waiters.pop(run_id, None)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self._url, self._settings) as conn:
                    conn.execute("LISTEN durable_finished")
                    self._ready.set()
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            with self._lock:
                                evs = list(self._waiters.get(n.payload, ()))
                            for ev in evs:
                                ev.set()
            except psycopg.OperationalError:
                self._ready.set()
                time.sleep(0.5)

    def close(self) -> None:
        self._stop.set()


class Client:
    """Synchronous client. ``database_url`` defaults to ``DURABLE_DATABASE_URL`` (or the embedded server)."""

    def __init__(self, database_url: str | None = None, *, schema: str | None = None,
                 settings: Settings | None = None, pool_size: int = 10, auto_migrate: bool = True) -> None:
        base = settings or Settings()
        db = DatabaseSettings(url=database_url or base.db.url, schema=schema or base.db.schema,
                              embedded_dir=base.db.embedded_dir)
        self.settings = Settings(db=db, limits=base.limits, worker=base.worker)
        self.url = resolve_url(db)
        if auto_migrate:
            with connect(self.url, db) as conn:
                migrate(conn, db.schema)
        self._pool = make_pool(self.url, db, size=pool_size, name="durable-client", check=True)
        self._watcher: _RunWatcher | None = None
        self._registered: set[str] = set()
        self._definitions = store.DefinitionCache()
        self._lock = threading.Lock()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._watcher:
            self._watcher.close()
        self._pool.close()

    def _register_local(self, conn: Any, workflow: str) -> None:
        # A process that defines the workflow can start it before any worker has registered it.
        if workflow in self._registered:
            return
        wf = REGISTRY.get(workflow)
        if wf is not None:
            from .worker import register_all

            register_all(conn, [wf])
        self._registered.add(workflow)

    def start(self, workflow: str, input: Any = None, *, queue: str | None = None,
              scheduled_at: datetime | None = None, idempotency_key: str | None = None, priority: int = 0) -> str:
        """Start a run and return its id; with ``idempotency_key``, the existing run's id if there is one."""
        input_json = dumps(input, what="input", limit=self.settings.limits.max_context_bytes)
        with self._pool.connection() as conn:
            self._register_local(conn, workflow)
            run_id, created = store.start_run(conn, workflow, input_json, queue=queue, scheduled_at=scheduled_at,
                                              idempotency_key=idempotency_key, priority=priority,
                                              cache=self._definitions)
        if created:
            metrics.RUNS_STARTED.labels(workflow).inc()
        return run_id

    def get(self, run_id: str) -> Run:
        store.check_run_id(run_id)
        with self._pool.connection() as conn, conn.pipeline():
            cur_run = conn.execute(q("get_execution"), {"run_id": run_id})
            cur_steps = conn.execute(q("run_steps"), {"run_id": run_id})
            cur_waits = conn.execute(q("run_waits"), {"run_id": run_id})
            row = cur_run.fetchone()
            steps, waits = cur_steps.fetchall(), cur_waits.fetchall()
        if row is None:
            raise RunNotFound(f"no run with id {run_id}")
        return Run.from_row(tuple(row), [tuple(s) for s in steps], [tuple(w) for w in waits])


    def list(self, workflow: str | None = None, status: str | None = None, limit: int = 100) -> list[Run]:
        if status is not None:
            RunStatus(status)  # refuse unknown status words with a ValueError naming them
        with self._pool.connection() as conn:
            rows = conn.execute(q("list_executions"),
                                {"workflow": workflow, "status": status, "limit": limit}).fetchall()
        return [Run.from_row(tuple(r)) for r in rows]

    def cancel(self, run_id: str, reason: str | None = None) -> bool:
        """Cancel a run; returns False (a no-op) if it had already finished."""
        with self._pool.connection() as conn, conn.transaction():
            return store.cancel_run(conn, run_id, reason)

    def send_event(self, run_id: str, name: str, payload: Any = None, *, delivery_id: str | None = None) -> str:
        """Send event ``name``; returns ``"delivered"`` (a wait took it) or ``"queued"`` (kept for a
        later wait). A repeated ``delivery_id`` for the same run is a no-op returning the first outcome."""
        with self._pool.connection() as conn, conn.transaction():
            return store.deliver(conn, run_id, "event", name, payload, delivery_id)

    def provide_input(self, run_id: str, name: str, data: Any = None, *, delivery_id: str | None = None) -> str:
        """Provide input ``name`` (also answers ``wait_for_approval``); see :meth:`send_event`."""
        with self._pool.connection() as conn, conn.transaction():
            return store.deliver(conn, run_id, "input", name, data, delivery_id)

    def wait(self, run_id: str, timeout: float | None = None) -> Run:
        """Block until the run finishes; raises ``RunTimeout`` after ``timeout`` seconds."""
        with self._lock:
            if self._watcher is None:
                self._watcher = _RunWatcher(self.url, self.settings.db)
        ev = self._watcher.subscribe(run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            with self._pool.connection() as conn:
                status = self._status(conn, run_id)
            while status not in FINISHED:
                remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if remaining <= 0:
                    raise RunTimeout(f"run {run_id} is still {status} after {timeout}s")
                if ev.wait(remaining):
                    # Notified: the run has finished, so read it whole straight away.
                    run = self.get(run_id)
                    if run.finished:
                        return run
                ev.clear()
                with self._pool.connection() as conn:
                    status = self._status(conn, run_id)
            return self.get(run_id)
        finally:
            self._watcher.unsubscribe(run_id, ev)

    def _status(self, conn: Any, run_id: str) -> str:
        store.check_run_id(run_id)
        row = conn.execute(q("get_execution_brief"), {"run_id": run_id}).fetchone()
        if row is None:
            raise RunNotFound(f"no run with id {run_id}")
        return str(row[2])

    def schedules(self) -> builtins.list[dict[str, Any]]:
        with self._pool.connection() as conn:
            rows = conn.execute(q("list_schedules")).fetchall()
        keys = ("name", "workflow", "cron", "timezone", "queue", "next_fire_at", "last_fire_at")
        return [dict(zip(keys, r, strict=True)) for r in rows]


class AsyncClient:
    """The same operations as :class:`Client`, awaitable."""

    def __init__(self, database_url: str | None = None, **kwargs: Any) -> None:
        self._client = Client(database_url, **kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        await asyncio.to_thread(self._client.close)

    async def start(self, workflow: str, input: Any = None, **kwargs: Any) -> str:
        return await asyncio.to_thread(self._client.start, workflow, input, **kwargs)

    async def get(self, run_id: str) -> Run:
        return await asyncio.to_thread(self._client.get, run_id)

    async def list(self, workflow: str | None = None, status: str | None = None, limit: int = 100) -> list[Run]:
        return await asyncio.to_thread(self._client.list, workflow, status, limit)

    async def cancel(self, run_id: str, reason: str | None = None) -> bool:
        return await asyncio.to_thread(self._client.cancel, run_id, reason)

    async def send_event(self, run_id: str, name: str, payload: Any = None, *, delivery_id: str | None = None) -> str:
        return await asyncio.to_thread(self._client.send_event, run_id, name, payload, delivery_id=delivery_id)

    async def provide_input(self, run_id: str, name: str, data: Any = None, *,
                            delivery_id: str | None = None) -> str:
        return await asyncio.to_thread(self._client.provide_input, run_id, name, data, delivery_id=delivery_id)

    async def wait(self, run_id: str, timeout: float | None = None) -> Run:
        return await asyncio.to_thread(self._client.wait, run_id, timeout)
