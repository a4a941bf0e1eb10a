"""The status reflector: one LISTEN on ``durable_runs`` drives every WorkflowRun's ``status``.

Started by :mod:`main` at operator startup; :mod:`runs` registers each WorkflowRun it starts (or
sees on a watch event) with :meth:`Reflector.track`. A notification only marks a run dirty; a
dispatcher hands dirty runs to a few workers at most once per ``min_interval`` per resource, so a
burst of step changes costs one patch. Each worker reads the run, renders it (:mod:`status`) and
patches only when the rendering changed. Every ``resync`` seconds all tracked runs are marked dirty,
and after the LISTEN connection is re-established too, so a lost notification only costs latency.

Only the active replica patches (Kopf peering): :meth:`Reflector.set_active` is driven by
:mod:`peering`, and a replica that loses the lead forgets what it tracked.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import psycopg

from durable import Client, RunNotFound
from durable.db import connect

from . import metrics, trace
from .constants import API_VERSION, FINALIZER, LABEL_COMPLETED, RUN_KIND, TERMINAL_PHASES
from .kube import KubeApi, Transient, ref_of
from .status import RENDERED_KEYS, render

log = logging.getLogger("durable_operator.notify")


@dataclass
class Tracked:
    namespace: str
    name: str
    uid: str | None
    phase: str | None = None  # last phase we wrote (or saw)
    digest: str | None = None  # digest of the last status we wrote
    resource_version: int = 0  # of our last write
    next_allowed: float = 0.0  # loop time before which we do not patch again
    labelled: bool = False
    finalizers: list[str] | None = None  # as last seen on the watch (None: not seen yet)
    extra: dict[str, Any] | None = None  # fields to add to our next status patch (the start handler's)
    since: float = 0.0  # loop time when tracking began


@dataclass
class _Outcome:
    """What one sync on a thread did, for the bookkeeping on the loop."""

    action: str  # "done", "gone" (run or resource deleted), "standby", "defer" (a new run, not written yet)
    status: dict[str, Any] | None = None
    digest: str | None = None
    patched: bool = False
    resource_version: int = 0
    extra_sent: dict[str, Any] | None = None


def _digest(status: dict[str, Any]) -> str:
    return hashlib.blake2b(json.dumps(status, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


class Reflector:
    def __init__(self, client: Client, kube: KubeApi, *, min_interval: float = 0.3, resync: float = 30.0,
                 workers: int = 32, active: bool = True, first_grace: float = 0.3) -> None:
        self.client = client
        self.kube = kube
        self.min_interval = min_interval
        self.resync = resync
        self.workers = workers
        self.first_grace = first_grace
        # With peering, start as a standby (as Kopf does) until :mod:`peering` has read the peering object.
        self.active = active
        self._tracked: dict[str, Tracked] = {}
        # Runs whose terminal status we wrote. Watch events of our own earlier writes (the completed label,
        # Kopf's patches) still arrive after that, showing an older status: they must not re-track the run
        # (one more read, status patch and Event per run). Bounded; insertion-ordered, oldest dropped first.
        self._finished: dict[str, int] = {}  # run id -> resourceVersion of our terminal status write
        self._dirty: dict[str, None] = {}  # insertion-ordered: the longest-waiting run goes first
        self._inflight: set[str] = set()
        self._wake = asyncio.Event()
        self._queue: asyncio.Queue[str] = asyncio.Queue()
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._thread: threading.Thread | None = None

    # ---- registration (event loop thread) -------------------------------------------------

    def track(self, run_id: str, namespace: str, name: str, uid: str | None, *,
              observed: Mapping[str, Any] | None = None, labelled: bool = False,
              resource_version: str | None = None, extra: Mapping[str, Any] | None = None) -> None:
        """Reflect this run into that resource. ``observed``: the resource's current status, if known,
        so an operator restart does not re-patch statuses that are already up to date. Runs tracked
        while on standby are kept (Kopf may resume and re-list before we notice) but not patched.
        ``extra``: status fields to write with the first patch (the start handler leaves ``runId`` and
        ``observedGeneration`` to it, so a new run costs one status patch, not two)."""
        t = self._tracked.get(run_id)
        if t is None:
            done = self._finished.get(run_id)
            if done is not None and (not resource_version or not resource_version.isdigit()
                                     or int(resource_version) <= done):
                return  # an event older than our terminal write (someone overwriting it later is re-tracked)
            t = Tracked(namespace, name, uid, labelled=labelled, since=self._now())
            if observed is not None:
                t.phase = observed.get("phase")
                t.digest = _digest({k: observed.get(k) for k in RENDERED_KEYS})
            self._tracked[run_id] = t
            metrics.TRACKED_RUNS.set(len(self._tracked))
            self.mark(run_id)
        if extra:
            t.extra = {**(t.extra or {}), **extra}
            self.mark(run_id)

    def _now(self) -> float:
        return self._loop.time() if self._loop is not None else 0.0

    def is_tracked(self, run_id: str) -> bool:
        return run_id in self._tracked

    def observed(self, run_id: str, phase: str | None, resource_version: str | None,
                 finalizers: list[str] | None = None) -> None:
        """A watch event showed this resource: if someone else's write is newer than ours, re-render it."""
        t = self._tracked.get(run_id)
        if t is None:
            return
        if finalizers is not None:
            t.finalizers = list(finalizers)
        if phase == t.phase or not resource_version or not resource_version.isdigit():
            return
        if int(resource_version) > t.resource_version and run_id not in self._inflight:
            t.digest = None
            self.mark(run_id)

    def finished(self, run_id: str, resource_version: int) -> None:
        """Its terminal status is written: forget it, and ignore stale watch events that would track it again."""
        self.forget(run_id)
        self._finished[run_id] = resource_version
        if len(self._finished) > self.FINISHED_MEMORY:
            del self._finished[next(iter(self._finished))]

    FINISHED_MEMORY = 50_000

    def forget(self, run_id: str) -> None:
        self._tracked.pop(run_id, None)
        self._dirty.pop(run_id, None)
        metrics.TRACKED_RUNS.set(len(self._tracked))

    def mark(self, run_id: str) -> None:
        if run_id in self._tracked:
            self._dirty.setdefault(run_id, None)
            self._wake.set()

    def mark_all(self) -> None:
        self._dirty.update(dict.fromkeys(self._tracked))
        self._wake.set()

    def set_active(self, active: bool) -> None:
        if active == self.active:
            return
        self.active = active
        metrics.ACTIVE.set(1 if active else 0)
        log.info("reflector %s", "active" if active else "standby", extra={"action": "peering"})
        if active:
            self.mark_all()
        else:  # Kopf re-lists every resource when it resumes this replica; start from that
            self._tracked.clear()
            self._dirty.clear()
            self._finished.clear()
            metrics.TRACKED_RUNS.set(0)

    # ---- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        metrics.ACTIVE.set(1 if self.active else 0)
        self._thread = threading.Thread(target=self._listen, name="durable-operator-listen", daemon=True)
        self._thread.start()
        self._tasks = [asyncio.create_task(self._dispatch(), name="reflector-dispatch"),
                       asyncio.create_task(self._resync_loop(), name="reflector-resync")]
        self._tasks += [asyncio.create_task(self._worker(), name=f"reflector-worker-{i}")
                        for i in range(self.workers)]

    async def stop(self) -> None:
        self._stop.set()
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # ---- the LISTEN thread --------------------------------------------------------------------

    def _listen(self) -> None:
        assert self._loop is not None
        loop = self._loop
        while not self._stop.is_set():
            try:
                with connect(self.client.url, self.client.settings.db) as conn:
                    conn.execute("LISTEN durable_runs")
                    loop.call_soon_threadsafe(self.mark_all)  # heal whatever changed while we were away
                    while not self._stop.is_set():
                        batch = {n.payload for n in conn.notifies(timeout=0.05)}
                        if batch:
                            metrics.NOTIFICATIONS.inc(len(batch))
                            loop.call_soon_threadsafe(self._mark_many, batch)
            except psycopg.Error as exc:
                log.warning("LISTEN connection lost, reconnecting: %s", exc, extra={"action": "listen"})
                self._stop.wait(1.0)

    def _mark_many(self, run_ids: set[str]) -> None:
        for run_id in run_ids:
            self.mark(run_id)

    # ---- dispatching and patching ---------------------------------------------------------------

    async def _resync_loop(self) -> None:
        while True:
            await asyncio.sleep(self.resync)
            self.mark_all()

    async def _dispatch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await self._wake.wait()
            self._wake.clear()
            if not self.active:
                continue  # set_active(True) wakes us again
            now = loop.time()
            next_due: float | None = None
            for run_id in list(self._dirty):
                t = self._tracked.get(run_id)
                if t is None:
                    self._dirty.pop(run_id, None)
                    continue
                if run_id in self._inflight:
                    continue  # re-examined when the in-flight sync ends
                if t.next_allowed <= now:
                    self._dirty.pop(run_id, None)
                    self._inflight.add(run_id)
                    self._queue.put_nowait(run_id)
                else:
                    next_due = t.next_allowed if next_due is None else min(next_due, t.next_allowed)
            if next_due is not None:
                loop.call_at(next_due, self._wake.set)

    async def _worker(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            run_id = await self._queue.get()
            t = self._tracked.get(run_id)
            try:
                if t is not None and self.active:
                    await self._sync(run_id, t)
            except (Transient, psycopg.Error, OSError) as exc:
                # API server or database briefly away: retry this run after a pause.
                metrics.STATUS_PATCH_ERRORS.inc()
                log.warning("status sync of %s/%s failed, will retry: %s", t.namespace if t else "?",
                            t.name if t else run_id, exc, extra={"action": "status", "run_id": run_id})
                if t is not None:
                    t.next_allowed = loop.time() + 2.0
                    self._dirty.setdefault(run_id, None)
            except Exception:
                log.exception("status sync of run %s failed", run_id, extra={"action": "status", "run_id": run_id})
                if t is not None:
                    t.next_allowed = loop.time() + 5.0
                    self._dirty.setdefault(run_id, None)
            finally:
                self._inflight.discard(run_id)
                self._wake.set()

    async def _sync(self, run_id: str, t: Tracked) -> None:
        """Read, render and write one run: all of it in ONE trip to a thread (the loop also runs Kopf, and
        every hop to a thread and back costs it a wake-up), the bookkeeping back on the loop."""
        loop = asyncio.get_running_loop()
        key = f"{t.namespace}/{t.name}"
        trace.mark(key, "sync")
        # A new run is usually taken by a worker within milliseconds, and short ones end soon after: rather
        # than Pending, then Running, then Succeeded a moment apart (a status patch, an Event and a watch
        # event each), a run never written yet waits for its next notification (or the grace period).
        defer_until = t.since + self.first_grace if t.phase is None else None
        out = await asyncio.to_thread(self._sync_blocking, run_id, t, key, defer_until)
        if out.action == "gone":
            self.forget(run_id)
            return
        if out.action == "defer":
            assert defer_until is not None
            loop.call_at(defer_until, self.mark, run_id)
            return
        if out.action == "standby":
            return
        assert out.status is not None
        if out.patched:
            t.resource_version = out.resource_version
            t.digest = out.digest
            if t.extra is out.extra_sent:
                t.extra = None
            t.next_allowed = loop.time() + self.min_interval
            t.phase = out.status["phase"]
        if out.status["phase"] in TERMINAL_PHASES:
            self.finished(run_id, t.resource_version)

    def _sync_blocking(self, run_id: str, t: Tracked, key: str, defer_until: float | None) -> _Outcome:
        """On a thread: the database read, the label patch of a finished run, the status patch, the Event."""
        try:
            run = self.client.get(run_id)
        except RunNotFound:
            return _Outcome("gone")
        status = render(run)
        digest = _digest(status)
        trace.mark(key, "read", status["phase"])
        if not self.active:
            return _Outcome("standby")  # lost the lead while reading: a standby never patches
        terminal = status["phase"] in TERMINAL_PHASES
        if not terminal and defer_until is not None and time.monotonic() < defer_until:  # = loop.time()
            return _Outcome("defer")
        if terminal and not t.labelled:
            self._complete(t)
        out = _Outcome("done", status=status, digest=digest)
        if digest == t.digest and not t.extra:
            return out
        t0 = time.perf_counter()
        trace.mark(key, "sent", status["phase"])
        extra = t.extra
        try:
            body = self.kube.patch_run_status(t.namespace, t.name, {**status, **extra} if extra else status)
        except Exception as exc:
            if getattr(exc, "status", None) == 404:  # the resource is gone
                return _Outcome("gone")
            raise
        trace.mark(key, "acked", status["phase"])
        metrics.STATUS_PATCH_SECONDS.observe(time.perf_counter() - t0)
        metrics.STATUS_PATCHES.labels("reflector").inc()
        rv = str(body.get("metadata", {}).get("resourceVersion", "0"))
        out.patched, out.resource_version, out.extra_sent = True, int(rv) if rv.isdigit() else 0, extra
        if status["phase"] != t.phase:
            self._post_phase_event(t, status)
        return out

    def _complete(self, t: Tracked) -> None:
        """Label a finished run and drop the finalizer in ONE patch, before the terminal status is written
        (``runs.run_is_active`` reads the label, so Kopf neither removes nor re-adds the finalizer)."""
        metadata: dict[str, Any] = {"labels": {LABEL_COMPLETED: "true"}}
        if t.finalizers is not None and FINALIZER in t.finalizers:
            rest = [f for f in t.finalizers if f != FINALIZER]
            metadata["finalizers"] = rest or None
        try:
            self.kube.patch_run(t.namespace, t.name, {"metadata": metadata})
        except Exception as exc:
            if getattr(exc, "status", None) != 404:
                raise
        t.labelled = True

    def _post_phase_event(self, t: Tracked, status: dict[str, Any]) -> None:
        phase = status["phase"]
        failed = phase in TERMINAL_PHASES and phase != "Succeeded"
        message = status.get("message") or f"run {status['runId']} is {phase.lower()}"
        if phase == "Succeeded":
            message = f"run {status['runId']} succeeded ({status.get('progress') or 'done'})"
        ref = ref_of(t.namespace, t.name, t.uid, RUN_KIND, API_VERSION)
        try:
            self.kube.post_event(ref, "Warning" if failed else "Normal", phase, message)
        except Exception as exc:  # an Event is best effort; the status already says it
            log.info("could not post event: %s", exc, extra={"action": "event"})
