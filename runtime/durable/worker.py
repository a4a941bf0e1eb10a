"""The worker process: leases tasks from the queues it serves and runs them on a pool of slots.

Started by ``durable worker`` / ``durable dev``. Wakes on ``NOTIFY durable_tasks`` and also polls
with a bounded back-off, so a lost notification costs latency, never a run. Leases are renewed
while steps run; a worker that dies simply lets them expire.

Slots it has no work for are offered to new runs (push dispatch, migration 0012, ``slots``): a
start leases its run to an offered slot and the task arrives on ``durable_push``, ready to run.
"""

from __future__ import annotations

import asyncio
import json
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
from .slots import IDLE, OFFERED, OFFERING, SlotBook
from .store import register_queues, register_workflow
from .tasks import Task

log = logging.getLogger("durable.worker")

# A worker's offers are taken only while its heartbeat is this fresh: a worker killed without
# warning is pushed new runs for at most this long (they wait for their lease to expire).
OFFER_ALIVE_SECONDS = 5.0
HEARTBEAT_SECONDS = 1.0


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
        # No spaces: a push notification is '<owner> <task>'.
        self.owner = f"{self.settings.worker.name.replace(' ', '_')}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.workflows = workflows if workflows is not None else REGISTRY.all()
        slots = sum(queues.values())
        size = self.settings.db.pool_size or slots + 3
        self.pool = make_pool(self.url, self.settings.db, size=size, name="durable-worker")
        self.slots = ThreadPoolExecutor(max_workers=slots, thread_name_prefix="durable-slot")
        self.book = SlotBook(queues)
        # task id -> (the task, its slot, the first task of the chain the slot runs)
        self.inflight: dict[int, tuple[Task, int, int]] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        # Queues that may hold ready tasks we left for lack of a free slot (see _lease_round).
        self._starved: set[str] = set()
        self._push_lock = threading.Lock()  # a push is taken whole, or not at all once stopping
        self._round = threading.Lock()  # one lease round at a time, on the dispatcher or the listen thread
        self._sleep_until = 0.0  # when the dispatcher's next round is due
        self._stop = threading.Event()
        self.loop = asyncio.new_event_loop()
        self._threads: list[threading.Thread] = []
        self.listen_pid = 0  # the LISTEN connection's server process, for operators and tests
        self.announcer = RunAnnouncer(self.pool)
        self.executor = Executor(self.pool, self.settings, self.owner, self.loop)
        self.executor.offer_at_end = self._offer_at_end

    # -- lifecycle --------------------------------------------------------------------------------

    def prepare(self) -> None:
        with connect(self.url, self.settings.db) as conn:
            migrate(conn, self.settings.db.schema)
            register_queues(conn, list(self.queues))
            register_all(conn, self.workflows)
            self._register_slots(conn)
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
                             (self._heartbeat, "durable-heartbeat"),
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
            self._unregister_slots()
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

        Offered slots are taken back first, so the round may use them; a queue drained with slots
        left over offers them again. A queue we could not drain (no free slot, or every free slot
        filled and more tasks ready) is marked starved, so the slot that frees up next wakes us; a
        drained queue tells us (in the same round trip) when its next task is due, and new tasks
        announce themselves with a notification. So a freed slot costs no round while nothing
        waits for it (migration 0008)."""
        poll = self.settings.worker.poll_max_ms / 1000
        wait = poll
        with self.pool.connection() as conn:
            for queue in self.queues:
                self._withdraw(conn, queue)
                slots = self.book.reserve(queue)
                if not slots:
                    with self._lock:
                        self._starved.add(queue)
                    continue
                try:
                    rows = conn.execute(q("lease_v3"), {"queue": queue, "limit": len(slots), "owner": self.owner,
                                                        "ttl": self.settings.worker.lease_seconds}).fetchall()
                except BaseException:
                    self.book.unreserve(slots)
                    raise
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
                for slot, task in zip(slots, tasks, strict=False):
                    self.book.occupy(slot, task.id)
                    self._submit(slot, task)
                left = slots[len(tasks):]
                with self._lock:
                    if drained:
                        self._starved.discard(queue)
                    else:
                        self._starved.add(queue)
                if not drained and self.book.count(queue, IDLE, OFFERING, OFFERED):
                    wait = 0.0  # a slot freed while we leased, before the queue was marked starved
                if drained and left and not self._stop.is_set():
                    self._offer(conn, left)
                else:
                    self.book.unreserve(left)
        return wait

    def _submit(self, slot: int, task: Task, load_context: bool = False) -> None:
        with self._lock:
            self.inflight[task.id] = (task, slot, task.id)
        metrics.child(metrics.TASKS_IN_FLIGHT, task.queue).inc()
        self.slots.submit(self._slot, slot, task, load_context)

    # -- push dispatch (migration 0012, ``slots``) -------------------------------------------------

    def _register_slots(self, conn: psycopg.Connection[Any]) -> None:
        slots = sorted(self.book.queue_of)
        conn.execute(q("register_slots"), {"owner": self.owner, "slots": slots,
                                           "queues": [self.book.queue_of[s] for s in slots],
                                           "lease_seconds": self.settings.worker.lease_seconds,
                                           "alive": OFFER_ALIVE_SECONDS})

    def _offer(self, conn: psycopg.Connection[Any], slots: list[int]) -> None:
        """Offer reserved slots to new runs. On failure they count as offered until a round takes
        them back, which tells whether the offer committed."""
        slots = self.book.begin_offer(slots)
        if not slots:
            return
        try:
            conn.execute(q("offer_slots"), {"owner": self.owner, "slots": slots, "free": True})
        except psycopg.OperationalError:
            self._wake.set()  # maybe committed: a round takes the slots back, which tells
            raise
        finally:
            self.book.end_offer(slots)

    def _withdraw(self, conn: psycopg.Connection[Any], queue: str | None) -> None:
        slots = self.book.begin_withdraw(queue)
        if not slots:
            return
        try:
            rows = conn.execute(q("offer_slots"), {"owner": self.owner, "slots": slots, "free": False}).fetchall()
        except BaseException:
            self.book.abort_withdraw(slots)
            raise
        self.book.end_withdraw((int(r[0]), bool(r[1]), r[2]) for r in rows)

    def _accept_push(self, slot: int, task: Task, outcome: str, load_context: bool = False) -> bool:
        """Run a task pushed to ``slot`` if the slot may take it (counted as ``outcome``); False when
        it may not, or we are stopping."""
        with self._push_lock:
            if self._stop.is_set() or not self.book.push(slot, task.id):
                return False
            metrics.child(metrics.PUSHED_RUNS, task.queue, outcome).inc()
            self._submit(slot, task, load_context=load_context)
            return True

    def _on_push(self, body: str) -> None:
        """A new run leased to one of our slots by its start: run it."""
        slot, task, inline = Task.from_push(json.loads(body))
        if not self._accept_push(slot, task, "taken", load_context=not inline):
            # Stopping: the task goes back to its queue when we unregister. Otherwise the slot
            # cannot take it (it never happens): the lease expires and a poll takes the task.
            log.warning("pushed task not taken", extra={"action": "push_refused", "run_id": task.run_id,
                                                        "slot": slot, "state": self.book.state(slot)})
            metrics.child(metrics.PUSHED_RUNS, task.queue, "refused").inc()

    def _adopt_pushes(self) -> None:
        """After (re)connecting the LISTEN connection: pushes sent while nobody listened are found
        in the database. Offers are taken back first, so no push can be under way meanwhile."""
        with self._round, self.pool.connection() as conn:
            self._withdraw(conn, None)
            awaited = self.book.awaited()
            if not awaited:
                return
            rows = conn.execute(q("pushed_tasks"), {"owner": self.owner, "slots": list(awaited)}).fetchall()
            for row in rows:
                slot, task = int(row[0]), Task.from_lease_row(tuple(row[1:]))
                if awaited.get(slot) == task.id and self._accept_push(slot, task, "adopted"):
                    log.info("pushed task adopted", extra={"action": "push_adopted", "run_id": task.run_id})
            self.book.give_up(awaited)  # the rest: their task is gone, or leased elsewhere

    def _unregister_slots(self) -> None:
        with self._push_lock:
            try:
                with self.pool.connection() as conn:
                    conn.execute(q("unregister_slots"), {"owner": self.owner, "received": self.book.received()})
            except psycopg.OperationalError as exc:
                log.warning("could not withdraw offers; they lapse with the heartbeat",
                            extra={"action": "unregister", "error": str(exc)})

    def _heartbeat(self) -> None:
        while not self._stop.wait(HEARTBEAT_SECONDS):
            try:
                with self.pool.connection() as conn:
                    alive = conn.execute(q("heartbeat"), {"owner": self.owner,
                                                          "alive": OFFER_ALIVE_SECONDS}).fetchone()
                    if alive is not None and not alive[0]:
                        # Our registration was dropped (a long outage): offers and pushes went with it.
                        with self._round:
                            self._register_slots(conn)
                            self.book.forget_offers()
                        self._wake.set()
            except psycopg.OperationalError as exc:
                log.warning("heartbeat failed", extra={"action": "heartbeat", "error": str(exc)})

    def _slot(self, slot: int, task: Task, load_context: bool = False) -> None:
        queue = task.queue
        chain = task.id
        current: Task | None = task
        try:
            if load_context:
                try:
                    with self.pool.connection() as conn:
                        row = conn.execute(q("run_context"), {"run_id": task.run_id}).fetchone()
                    task.context = row[0] if row else None
                except psycopg.OperationalError as exc:
                    # The lease expires and a poll (ours or a peer's) takes the task again.
                    log.warning("could not read a pushed run's input", extra={"run_id": task.run_id,
                                                                               "error": str(exc)})
                    current = None
            while current is not None and not self._stop.is_set():
                with self._lock:
                    self.inflight[current.id] = (current, slot, chain)
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
                    if nxt is None or nxt.id != current.id:
                        self.inflight.pop(current.id, None)
                current = nxt
        finally:
            metrics.child(metrics.TASKS_IN_FLIGHT, queue).dec()
            self._slot_free(slot, chain)

    def _offer_at_end(self, task: Task) -> int | None:
        """The executor is about to commit the last checkpoint of ``task``'s chain: the slot to offer
        in that same transaction, so it is offered before the run is seen finished (a client that
        starts its next run on seeing it finish then finds the slot). None when tasks wait for it."""
        with self._lock:
            entry = self.inflight.get(task.id)
            if entry is None or self.book.queue_of[entry[1]] in self._starved or self._stop.is_set():
                return None
        _, slot, chain = entry
        return slot if self.book.offer_at_end(slot, chain) else None

    def _slot_free(self, slot: int, chain: int) -> None:
        """Offer the slot, unless tasks wait for it (the rounds get it) or it was offered already."""
        if self.book.finish(slot, chain) != "free":
            return
        queue = self.book.queue_of[slot]
        with self._lock:
            starved = queue in self._starved
        if starved or self._stop.is_set():
            self.book.unreserve([slot])
            if starved:
                self._wake.set()
            return
        try:
            with self.pool.connection() as conn:
                self._offer(conn, [slot])
        except psycopg.OperationalError as exc:
            log.warning("could not offer a free slot", extra={"action": "offer", "error": str(exc)})

    # -- background duties ------------------------------------------------------------------------

    def _listen(self) -> None:
        delay = 0.1
        while not self._stop.is_set():
            try:
                with connect(self.url, self.settings.db) as conn:
                    conn.execute("LISTEN durable_tasks")
                    conn.execute("LISTEN durable_push")
                    self.listen_pid = conn.info.backend_pid
                    delay = 0.1
                    self._adopt_pushes()
                    self._wake.set()  # anything sent while we were not listening is picked up by a poll
                    while not self._stop.is_set():
                        for n in conn.notifies(timeout=1.0):
                            if n.channel == "durable_push":
                                owner, _, body = n.payload.partition(" ")
                                if owner == self.owner:
                                    self._on_push(body)
                            elif n.payload in self.queues:
                                self._announced()
            except psycopg.OperationalError:
                time.sleep(delay)
                delay = min(delay * 2, 2.0)

    def _renew(self) -> None:
        interval = max(self.settings.worker.lease_seconds / 3, 0.5)
        while not self._stop.wait(interval):
            with self._lock:
                tokens = [t.token for t, _, _ in self.inflight.values()]
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

