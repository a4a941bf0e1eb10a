"""The worker process: leases tasks from the queues it serves and runs them on a pool of slots.

Started by ``durable worker`` / ``durable dev``. Wakes on ``NOTIFY durable_tasks`` and also polls
with a bounded back-off, so a lost notification costs latency, never a run. Leases are renewed
while steps run; a worker that dies simply lets them expire.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import Any

import psycopg

from . import metrics
from .announce import RunAnnouncer
from .db import connect, make_pool, q, resolve_url, retry_while_unreachable
from .dsl import REGISTRY, Workflow
from .executor import Executor
from .jsonutil import dumps
from .migrate import migrate
from .settings import Settings
from .store import register_queues, register_workflow
from .tasks import Task

log = logging.getLogger("durable.worker")


def parse_queues(specs: list[str] | None) -> dict[str, int]:
    """``["default=10", "priority=5"]`` → ``{"default": 10, "priority": 5}``; a bare name gets 10."""
    out: dict[str, int] = {}
    for spec in specs or ["default=10"]:
        name, _, n = spec.partition("=")
        name = name.strip()
        try:
            conc = int(n) if n else 10
        except ValueError:
            raise ValueError(f"--queue {spec!r}: concurrency must be an integer, as in 'default=10'") from None
        if not name or conc < 1:
            raise ValueError(f"--queue {spec!r}: expected NAME=CONCURRENCY with CONCURRENCY >= 1")
        out[name] = conc
    return out


def register_all(conn: psycopg.Connection[Any], workflows: list[Workflow]) -> None:
    """Store each definition (so clients without the code can start runs) and its schedule."""
    from .schedule import next_tick

    for wf in workflows:
        graph = wf.graph
        desc = {**graph.describe(), "timeout_ms": wf.timeout_ms}
        with conn.transaction():
            register_workflow(conn, wf.name, graph.hash, graph.first, desc)
            if wf.schedule is not None:
                nxt = next_tick(wf.schedule.expression, wf.schedule.timezone, datetime.now(UTC))
                row = conn.execute(q("upsert_schedule"), {
                    "name": wf.name, "workflow": wf.name, "cron": wf.schedule.expression,
                    "timezone": wf.schedule.timezone, "input": dumps({}, what="input"), "queue": wf.queue,
                    "next_fire_at": nxt}).fetchone()
                conn.execute(q("upsert_cron_task"), {"name": wf.name, "queue": wf.queue,
                                                     "due_at": row[0]})  # type: ignore[index]


class Worker:
    def __init__(self, queues: dict[str, int], settings: Settings | None = None,
                 workflows: list[Workflow] | None = None) -> None:
        self.settings = settings or Settings()
        self.queues = queues
        self.url = resolve_url(self.settings.db)
        self.owner = f"{self.settings.worker.name}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.workflows = workflows if workflows is not None else REGISTRY.all()
        slots = sum(queues.values())
        size = self.settings.db.pool_size or slots + 3
        self.pool = make_pool(self.url, self.settings.db, size=size, name="durable-worker")
        self.slots = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="durable-slot")
        self.free = dict(queues)
        self.inflight: dict[int, Task] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # Queues that may hold ready tasks we left for lack of a free slot (see _lease_round).
        self._starved: set[str] = set()
        self._round = threading.Lock()  # one lease round at a time, on the dispatcher or the listen thread
        self._sleep_until = 0.0  # when the dispatcher's next round is due
        self._stop = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._threads: list[threading.Thread] = []
        self.announcer = RunAnnouncer(self.pool)
        self.executor = Executor(self.pool, self.settings, self.owner, self.loop)

    # -- lifecycle --------------------------------------------------------------------------------

    def prepare(self) -> None:
        with connect(self.url, self.settings.db) as conn:
            migrate(conn, self.settings.db.schema)
            register_queues(conn, list(self.queues))
            register_all(conn, self.workflows)
            for wf in self.workflows:
                for queue in [wf.queue, *(s.queue for s in wf.graph.steps.values() if s.queue)]:
                    if queue not in self.queues:
                        log.warning("workflow uses a queue this worker does not serve",
                                    extra={"workflow": wf.name, "queue": queue})
        metrics.serve(self.settings.worker.metrics_port)

    def start(self) -> None:
        """Prepare and start background threads; ``run_forever`` or ``stop`` afterwards."""
        self.prepare()
        for target, name in ((self.loop.run_forever, "durable-loop"), (self._listen, "durable-listen"),
                             (self._renew, "durable-renew"), (self._dispatch, "durable-dispatch"),
                             (self.announcer.run, "durable-announce")):
            t = threading.Thread(target=target, name=name, daemon=True)
            t.start()
            self._threads.append(t)
        log.info("worker started", extra={"action": "worker_started", "queues": self.queues, "owner": self.owner,
                                          "workflows": [w.name for w in self.workflows]})

    def run_forever(self) -> None:
        self.start()
        try:
            while not self._stop.wait(1.0):
                pass
        finally:
            self.stop()

    def stop(self, grace: float = 10.0) -> None:
        self._stop.set()
        self._wake.set()
        for t in self._threads:
            if t.name == "durable-dispatch":
                t.join(grace)  # no new task may be handed to the slots once they shut down
        with self._round:  # a round the listen thread is running finishes handing its tasks to the slots
            self.slots.shutdown(wait=True, cancel_futures=True)
        self.announcer.close()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.pool.close(timeout=grace)

    # -- dispatch ---------------------------------------------------------------------------------

    def _dispatch(self) -> None:
        backoff = 0.01
        last_gauges = 0.0
        while not self._stop.is_set():
            self._wake.clear()
            try:
                with self._round:
                    wait = self._lease_round()
                    self._sleep_until = time.monotonic() + wait
                if time.monotonic() - last_gauges > 5:
                    last_gauges = time.monotonic()
                    self._update_gauges()
                backoff = 0.01
            except psycopg.OperationalError as exc:
                log.warning("database unavailable; retrying", extra={"action": "db_error", "error": str(exc)})
                wait, backoff = backoff, min(backoff * 2, 2.0)
            if wait > 0:
                self._wake.wait(wait)

    def _announced(self) -> None:
        """A task was announced: lease it right here, on the listen thread, when no round is running (one
        thread hand-off fewer per new run than waking the dispatcher); else leave it to the dispatcher."""
        if not self._round.acquire(blocking=False):
            self._wake.set()
            return
        try:
            if self._stop.is_set():
                return  # stopping: the slots may no longer take tasks
            wait = self._lease_round()
            due = time.monotonic() + wait
            if due < self._sleep_until:  # e.g. a new timer due before the dispatcher means to look again
                self._sleep_until = due
                self._wake.set()
        except psycopg.OperationalError:
            self._wake.set()  # the dispatcher backs off and retries
        finally:
            self._round.release()

    def _lease_round(self) -> float:
        """Lease what the free slots can take; returns how long to sleep before the next round.

        A queue we could not drain (no free slot, or every free slot filled and more tasks ready) is
        marked starved, so the slot that frees up next wakes us; a drained queue tells us (in the
        same round trip) when its next task is due, and new tasks announce themselves with a
        notification. So a freed slot costs no query while nothing waits for it (migration 0008)."""
        poll = self.settings.worker.poll_max_ms / 1000
        wait = poll
        with self._lock:
            wanted = {q_: n for q_, n in self.free.items() if n > 0}
            self._starved.update(q_ for q_, n in self.free.items() if n <= 0)
        if not wanted:
            return poll
        with self.pool.connection() as conn:
            for queue, n in wanted.items():
                rows = conn.execute(q("lease_v3"), {"queue": queue, "limit": n, "owner": self.owner,
                                                    "ttl": self.settings.worker.lease_seconds}).fetchall()
                drained = False
                tasks = []
                for row in rows:
                    if row[0] is None:
                        drained = True
                        if row[-1] is not None:
                            # Small floor: a due task we could not lease (locked by a peer) must not make us spin.
                            wait = min(wait, max(0.005, float(row[-1])))
                        continue
                    tasks.append(Task.from_lease_row(tuple(row)))
                self.announcer.add([str(t.run_id) for t in tasks if t.started])
                for task in tasks:
                    with self._lock:
                        self.free[queue] -= 1
                        self.inflight[task.id] = task
                    metrics.child(metrics.TASKS_IN_FLIGHT, queue).inc()
                    self.slots.submit(self._slot, task)
                with self._lock:
                    if drained:
                        self._starved.discard(queue)
                    else:
                        self._starved.add(queue)
                        if self.free[queue] > 0:
                            wait = 0.0  # a slot freed while we leased: it saw no reason to wake us
        return wait

    def _slot(self, task: Task) -> None:
        queue = task.queue
        current: Task | None = task
        try:
            while current is not None and not self._stop.is_set():
                with self._lock:
                    self.inflight[current.id] = current
                try:
                    # Only a task's preparation (loading its journal or context) can fail here on a
                    # lost database; the step itself never re-runs: checkpoints retry themselves.
                    nxt = retry_while_unreachable(lambda t=current: self.executor.run(t),  # type: ignore[misc]
                                                  within=self.settings.worker.lease_seconds, what="task",
                                                  stop=self._stop.is_set)
                except Exception:
                    log.exception("task crashed", extra={"run_id": current.run_id, "step": current.step})
                    nxt = None
                with self._lock:
                    self.inflight.pop(current.id, None)
                current = nxt
        finally:
            with self._lock:
                self.free[queue] += 1
                starved = queue in self._starved
            metrics.child(metrics.TASKS_IN_FLIGHT, queue).dec()
            if starved:
                self._wake.set()

    # -- background duties ------------------------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with connect(self.url, self.settings.db) as conn:
                    conn.execute("LISTEN durable_tasks")
                    delay = 0.1
                    self._wake.set()  # anything sent while we were not listening is picked up by a poll
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            if n.payload in self.queues:
                                self._announced()
            except psycopg.OperationalError:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _renew(self) -> None:
        interval = max(self.settings.worker.lease_seconds / 3, 0.5)
        while not self._stop.wait(interval):
            with self._lock:
                tokens = [t.token for t in self.inflight.values()]
            if not tokens:
                continue
            try:
                with self.pool.connection() as conn:
                    conn.execute(q("renew_leases"), {"tokens": tokens, "ttl": self.settings.worker.lease_seconds})
            except psycopg.OperationalError as exc:
                log.warning("could not renew leases", extra={"error": str(exc)})

    def _update_gauges(self) -> None:
        with self.pool.connection() as conn:
            for queue, depth, oldest in conn.execute(q("queue_depths")).fetchall():
                metrics.QUEUE_DEPTH.labels(queue).set(depth)
                metrics.QUEUE_OLDEST.labels(queue).set(float(oldest))
            for kind, n in conn.execute(q("active_waits")).fetchall():
                metrics.ACTIVE_WAITS.labels(kind).set(n)

