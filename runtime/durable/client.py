"""``durable.Client`` and ``durable.AsyncClient``: start, inspect, signal and wait for runs.

Used by applications, the CLI and the Kubernetes operator. Both clients share everything but I/O:
the async one runs the same code on a thread.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import threading
import time
from collections import defaultdict
from datetime import datetime
from typing import Any

import psycopg
from psycopg_pool import ConnectionPool

from . import groupcommit, metrics, store
from .db import connect, make_pool, q, resolve_url
from .dsl import REGISTRY
from .errors import RunNotFound, RunTimeout
from .ids import new_run_id
from .jsonutil import dumps, rows_with_json_last
from .migrate import migrate
from .models import FINISHED, Run, RunStatus
from .settings import DatabaseSettings, Settings


class _RunWatcher:
    """One LISTEN connection per client, fanning ``durable_finished`` notifications (sent when a run
    reaches a terminal status) out to waiters.

    A notification carries the finished run itself when it fits (migration 0006), so a waiter
    usually has nothing left to ask the database; it is kept (``record``) until the run's last
    waiter leaves. The watcher also remembers the runs this client started while it was listening
    (``track``): for those, the absence of a notification already says the run has not finished, so
    ``Client.wait`` need not ask the database before waiting, and one that finishes before anyone
    waits keeps its record for the wait to come. A (re)connection starts a new generation: runs
    tracked in an earlier one may have finished while nobody listened, and are checked in the
    database."""

    _TRACKED_MAX = 10_000  # runs started and never waited for must not grow without bound
    _KEPT_BYTES_MAX = 8 << 20  # nor their records: past this, a later wait reads the run instead

    def __init__(self, url: str, settings: DatabaseSettings) -> None:
        self._url = url
        self._settings = settings
        self._waiters: dict[str, list[threading.Event]] = defaultdict(list)
        self._lock = threading.Lock()
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._generation = 0
        self._listening = False
        self._tracked: dict[str, int] = {}  # run id -> generation it was started in
        self._finished: set[str] = set()  # tracked runs notified before anyone waited for them
        self._records: dict[str, str] = {}  # run id -> its finished record ("" when it did not fit)
        self._kept_bytes = 0
        self._thread = threading.Thread(target=self._run, name="durable-run-watcher", daemon=True)
        self._thread.start()
        self._ready.wait(5)

    def track(self, run_id: str) -> None:
        """Call before the run's start commits, so its finish cannot be missed."""
        with self._lock:
            if not self._listening:
                return
            self._tracked[run_id] = self._generation
            if len(self._tracked) > self._TRACKED_MAX:
                oldest = next(iter(self._tracked))
                del self._tracked[oldest]
                self._finished.discard(oldest)
                self._drop(oldest)

    def untrack(self, run_id: str) -> None:
        with self._lock:
            self._tracked.pop(run_id, None)
            self._finished.discard(run_id)
            if run_id not in self._waiters:
                self._drop(run_id)

    def subscribe(self, run_id: str) -> tuple[threading.Event, bool]:
        """The event is set when ``run_id`` finishes. The flag is True when the watcher has listened
        since before the run started: then the event is already set if it has finished."""
        ev = threading.Event()
        with self._lock:
            self._waiters[run_id].append(ev)
            generation = self._tracked.pop(run_id, None)
            known = self._listening and generation == self._generation
            if run_id in self._finished:
                self._finished.discard(run_id)
                ev.set()
        return ev, known

    def unsubscribe(self, run_id: str, ev: threading.Event) -> None:
        with self._lock:
            evs = self._waiters.get(run_id, [])
            if ev in evs:
                evs.remove(ev)
            if not evs:
                self._waiters.pop(run_id, None)
                self._drop(run_id)

    def record(self, run_id: str) -> Any:
        """The finished run as its notification carried it (``durable_run_v1``), or None."""
        with self._lock:
            text = self._records.get(run_id)
        return json.loads(text) if text else None

    def _keep(self, run_id: str, record: str) -> None:
        if len(record) > self._KEPT_BYTES_MAX - self._kept_bytes:
            record = ""
        self._drop(run_id)
        self._records[run_id] = record
        self._kept_bytes += len(record)

    def _drop(self, run_id: str) -> None:
        self._kept_bytes -= len(self._records.pop(run_id, ""))

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                with connect(self._url, self._settings) as conn:
                    conn.execute("LISTEN durable_finished")
                    with self._lock:
                        self._generation += 1
                        self._listening = True
                    self._ready.set()
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=0.5):
                            # '<run id> <record>', or the bare run id (too big to carry, or an older worker)
                            run_id, _, record = n.payload.partition(" ")
                            with self._lock:
                                evs = list(self._waiters.get(run_id, ()))
                                if evs:
                                    self._keep(run_id, record)
                                elif run_id in self._tracked:
                                    self._finished.add(run_id)
                                    self._keep(run_id, record)
                            for ev in evs:
                                ev.set()
            except psycopg.OperationalError:
                with self._lock:
                    self._listening = False
                self._ready.set()
                time.sleep(0.5)

    def close(self) -> None:
        self._stop.set()


def _starts_json(starts: builtins.list[dict[str, Any]]) -> str:
    """The batch as ``durable_start_batch_v2`` takes it, each input last."""
    return rows_with_json_last(([p["id"], p["workflow"], p["hash"], p["queue"], p["priority"], p["first_step"],
                                 p["idempotency_key"], _iso(p["scheduled_at"]), _iso(p["deadline"])], p["input"])
                               for p in starts)


def _iso(when: datetime | None) -> str | None:
    return None if when is None else when.isoformat()


class _StartBatch(groupcommit.GroupCommit[dict[str, Any], tuple[str, bool]]):
    """``Client.start``'s group commit (see ``groupcommit``): starts made by this client's threads while
    another start is committing go in one call (``durable_start_batch_v2``, migrations 0007 and 0012)
    and one commit. Each start is checked before it is queued; one that still fails in a batch is
    retried alone, so it fails only itself. A lone start takes the same call, so it too is pushed
    to an offered worker slot."""

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__()
        self.pool = pool

    def commit_one(self, start: dict[str, Any]) -> tuple[str, bool]:
        result: tuple[str, bool] = self.commit_many([start])[0]
        return result

    def commit_many(self, starts: builtins.list[dict[str, Any]]) -> builtins.list[Any]:
        with self.pool.connection() as conn:
            rows = conn.execute(q("start_batch_v2"), {"starts": _starts_json(starts)}).fetchall()
        return [(str(row[0]), bool(row[1])) for row in rows]

    def order(self, start: dict[str, Any]) -> Any:
        key = start["idempotency_key"]  # keys are inserted in one order by every client
        return (key is None, key or "")


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
        self._starts = _StartBatch(self._pool)
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
        new_id = new_run_id()
        options: dict[str, Any] = {"queue": queue, "scheduled_at": scheduled_at, "idempotency_key": idempotency_key,
                                   "priority": priority, "cache": self._definitions, "run_id": new_id}
        try:  # checked before it joins a batch, so a bad start fails alone and changes nothing
            params = store.start_params(None, workflow, input_json, **options)
        except store.CacheMiss:
            with self._pool.connection() as conn:
                self._register_local(conn, workflow)
                params = store.start_params(conn, workflow, input_json, **options)
        watcher = self._watcher
        if watcher is not None:
            watcher.track(new_id)
        try:
            run_id, created = self._starts.submit(params)
        except BaseException:
            if watcher is not None:
                watcher.untrack(new_id)
            raise
        if created:
            metrics.child(metrics.RUNS_STARTED, workflow).inc()
        elif watcher is not None:
            watcher.untrack(new_id)  # an existing run, started before we were told to track it
        return run_id

    def get(self, run_id: str) -> Run:
        store.check_run_id(run_id)
        with self._pool.connection() as conn:
            row = conn.execute(q("get_run"), {"run_id": run_id}).fetchone()
        if row is None or row[0] is None:
            raise RunNotFound(f"no run with id {run_id}")
        return Run.from_record(row[0])


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
        """Block until the run finishes; raises ``RunTimeout`` after ``timeout`` seconds.

        A run this client started needs no query when its notification carries the finished run,
        else one; any other run one more, to learn whether it has already finished. A check every
        second covers a lost notification."""
        store.check_run_id(run_id)
        with self._lock:
            if self._watcher is None:
                self._watcher = _RunWatcher(self.url, self.settings.db)
        ev, known = self._watcher.subscribe(run_id)
        deadline = None if timeout is None else time.monotonic() + timeout
        try:
            notified = ev.is_set()
            status = None if known else self._status(run_id)
            while True:
                if notified or status in FINISHED:
                    record = self._watcher.record(run_id) if notified else None
                    run = Run.from_record(record) if record is not None else self.get(run_id)
                    if run.finished:
                        return run
                    status = run.status
                remaining = 1.0 if deadline is None else min(1.0, deadline - time.monotonic())
                if remaining <= 0:
                    raise RunTimeout(f"run {run_id} is still {status or self._status(run_id)} after {timeout}s")
                notified = ev.wait(remaining)
                ev.clear()
                if not notified:
                    status = self._status(run_id)
        finally:
            self._watcher.unsubscribe(run_id, ev)

    def _status(self, run_id: str) -> str:
        with self._pool.connection() as conn:
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
