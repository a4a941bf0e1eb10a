"""Runs one leased task: calls the user's step, decides what happened, and checkpoints it.

Called by the worker's slots. Returns the next task when the checkpoint leased it straight back
to us (the fast path), so a sequential pipeline runs without touching the queue.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextvars
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, TypeVar

import psycopg
from psycopg_pool import ConnectionPool

from . import checkpoint as cp
from . import metrics
from .context import Context, assign
from .db import q, retry_while_unreachable
from .dsl import REGISTRY, StepDef, Workflow
from .errors import InvalidInput, NonRetryableError, StepTimeout
from .graph import FanOut, Graph
from .jsonutil import dumps
from .schedule import next_tick
from .settings import Settings
from .tasks import Task
from .waits import StepRuntime, Suspend, WaitRecord, bind, unbind

log = logging.getLogger("durable.executor")
T = TypeVar("T")


def as_context(value: Any) -> Any:
    if value is None:
        return Context()
    return Context(value) if isinstance(value, dict) else value


def error_of(step: str | None, exc: BaseException) -> dict[str, Any]:
    return {"step": step, "type": type(exc).__name__, "message": str(exc) or type(exc).__name__}


class _BadOutput(NonRetryableError):
    pass


class Executor:
    def __init__(self, pool: ConnectionPool, settings: Settings, owner: str, loop: asyncio.AbstractEventLoop) -> None:
        self.pool = pool
        self.settings = settings
        self.owner = owner
        self.loop = loop
        self.ttl = settings.worker.lease_seconds
        self.max_bytes = settings.limits.max_context_bytes
        self._timeout_pool = concurrent.futures.ThreadPoolExecutor(thread_name_prefix="durable-timed-step")
        self.group = cp.GroupCommit(pool, owner, self.ttl)
        # Set by the worker: the slot to offer in the last checkpoint of a task's chain (or None).
        self.offer_at_end: Callable[[Task], int | None] | None = None

    # -- dispatch ---------------------------------------------------------------------------------

    def run(self, task: Task) -> Task | None:
        handlers = {"step": self._step, "join": self._join, "compensate": self._compensate,
                    "deadline": self._deadline, "cron": self._cron}
        try:
            return handlers[task.kind](task)
        except cp.LeaseLost:
            log.info("lease lost; result discarded",
                     extra={"action": "lease_lost", "run_id": task.run_id, "step": task.step})
            return None

    def _workflow(self, task: Task) -> Workflow | None:
        wf = REGISTRY.get(task.workflow or "")
        if wf is None:
            # Another worker on this queue may have the code; put the task back rather than fail the run.
            log.error("workflow not loaded in this worker; releasing task",
                      extra={"action": "unknown_workflow", "run_id": task.run_id, "workflow": task.workflow})
            with self.pool.connection() as conn:
                conn.execute(q("retry_task"), {"delay": 5.0, "task_id": task.id, "token": task.token})
        return wf

    def _checkpoint(self, record: Callable[[Any], T]) -> T:
        """Run a checkpoint, retrying it (never the step) while the database is unreachable.

        Safe because every checkpoint is guarded by the lease token: if an earlier try did commit,
        the retry finds the token gone and raises LeaseLost. Past the lease, another worker owns
        the task, so we give up the same way."""
        def attempt() -> T:
            with self.pool.connection() as conn:
                return record(conn)

        return self._retrying(attempt)

    def _retrying(self, checkpoint: Callable[[], T]) -> T:
        try:
            return retry_while_unreachable(checkpoint, within=self.ttl, what="checkpoint")
        except psycopg.OperationalError as exc:
            raise cp.LeaseLost(f"database unreachable for the whole lease: {exc}") from exc

    def _queue_of(self, graph: Graph, node: str, task: Task) -> str:
        step = graph.steps.get(node)
        return (step.queue if step and step.queue else None) or task.run_queue

    # -- forward steps ----------------------------------------------------------------------------

    def _step(self, task: Task) -> Task | None:
        wf = self._workflow(task)
        if wf is None:
            return None
        graph = wf.graph
        ctx = as_context(task.context)
        try:
            target = graph.enter(task.step, ctx)
        except Exception as exc:
            return self._fail(task, graph, task.step, error_of(task.step, exc), None)
        if isinstance(target, FanOut):
            members = [(s.name, s.queue or task.run_queue) for s in target.parallel.steps]
            with self.pool.connection() as conn:
                cp.fan_out(conn, task, node=target.parallel.name, members=members,
                           limit=target.parallel.max_concurrency)
            return None
        step = target.step
        journal: dict[int, WaitRecord] = {}
        if step.name != task.step or not task.fresh:  # a plain step just entered needs no query
            with self.pool.connection() as conn:
                if step.name != task.step:
                    cp.rename_step(conn, task, step.name)
                    task.step = step.name
                if not task.fresh:
                    journal = self._journal(conn, task)
        return self._attempt(task, wf, graph, step, ctx, journal)

    def _journal(self, conn: Any, task: Task) -> dict[int, WaitRecord]:
        rows = conn.execute(q("journal"), {"run_id": task.run_id, "step": task.step}).fetchall()
        if cp.time_out_waits(conn, task, rows):
            rows = conn.execute(q("journal"), {"run_id": task.run_id, "step": task.step}).fetchall()
        return {r[0]: WaitRecord(idx=r[0], kind=r[1], names=list(r[2]), status=r[3], value=r[4]) for r in rows}

    def _attempt(self, task: Task, wf: Workflow, graph: Graph, step: StepDef, ctx: Any,
                 journal: dict[int, WaitRecord]) -> Task | None:
        started_at = datetime.now(UTC)
        t0 = time.perf_counter()
        extra = {"run_id": task.run_id, "step": step.name, "attempt": task.attempt}
        try:
            out = self._call(step, ctx, StepRuntime(str(task.run_id), step.name, journal))
            new_ctx = ctx if out is None else out
            if not isinstance(new_ctx, Mapping):
                raise _BadOutput(f"step {step.name!r} returned {type(out).__name__}; a step returns the new "
                                 "context (a mapping) or None")
            ctx_json = dumps(new_ctx, what=f"output of step {step.name!r}", limit=self.max_bytes)
        except Suspend as sig:
            request = sig.request
            token = self._checkpoint(lambda conn: cp.suspend(
                conn, task, step=step.name, request=request, queue=task.queue, lease_ttl=self.ttl,
                max_bytes=self.max_bytes))
            log.debug("suspended", extra={**extra, "action": "suspend", "wait": request.kind})
            if token is None:
                return None
            return replace(task, token=token, fresh=False)
        except Exception as exc:
            metrics.child(metrics.STEP_DURATION, wf.name, step.name).observe(time.perf_counter() - t0)
            err = error_of(step.name, exc)
            if isinstance(exc, InvalidInput):
                exc = _BadOutput(str(exc))
            if step.retry.should_retry(exc, task.attempt):
                delay = step.retry.delay(task.attempt)
                metrics.child(metrics.STEP_ATTEMPTS, wf.name, step.name, "retry").inc()
                metrics.STEP_RETRIES.labels(wf.name, step.name).inc()
                log.warning("step failed; will retry", extra={**extra, "action": "retry", "delay_ms": delay,
                                                               "error": err["message"]})
                self._checkpoint(lambda conn: cp.retry(conn, task, step=step.name, error=err, delay_ms=delay,
                                                       started_at=started_at, worker=self.owner))
                return None
            metrics.child(metrics.STEP_ATTEMPTS, wf.name, step.name, "failed").inc()
            log.warning("step failed", extra={**extra, "action": "step_failed", "error": err["message"]})
            parallel = graph.parallel_of.get(step.name)
            if parallel is not None:
                return self._member_done(task, graph, step, "failed", None, err, started_at)
            return self._fail(task, graph, step.name, err, started_at)
        metrics.child(metrics.STEP_DURATION, wf.name, step.name).observe(time.perf_counter() - t0)
        metrics.child(metrics.STEP_ATTEMPTS, wf.name, step.name, "succeeded").inc()
        if step.name in graph.parallel_of:
            return self._member_done(task, graph, step, "succeeded", ctx_json, None, started_at)
        return self._advance(task, graph, step.name, step.name, new_ctx, ctx_json, started_at)

    def _advance(self, task: Task, graph: Graph, recorded: str | None, at: str, new_ctx: Any, ctx_json: str,
                 started_at: datetime) -> Task | None:
        nxt = graph.after(at)
        queue = self._queue_of(graph, nxt, task) if nxt else task.queue
        keep = nxt is not None and queue == task.queue
        offer = None if keep or self.offer_at_end is None else self.offer_at_end(task)
        token = self._retrying(lambda: self.group.advance(
            task, step=recorded, next_node=nxt, next_queue=queue, ctx_json=ctx_json, started_at=started_at,
            keep=keep, offer=offer))
        if nxt is None:
            metrics.child(metrics.RUNS_FINISHED, graph.wf.name, "succeeded").inc()
            log.info("run succeeded", extra={"action": "run_succeeded", "run_id": task.run_id})
        if token is None:
            return None
        return task.advanced(str(nxt), queue, token, new_ctx)

    def _member_done(self, task: Task, graph: Graph, step: StepDef, status: str, output_json: str | None,
                     err: dict[str, Any] | None, started_at: datetime) -> Task | None:
        node = graph.parallel_of[step.name]
        members = [(s.name, s.queue or task.run_queue) for s in node.steps]
        joined = self._checkpoint(lambda conn: cp.member_done(
            conn, task, step=step.name, node=node.name, members=members, limit=node.max_concurrency, status=status,
            output_json=output_json, error=err, started_at=started_at, worker=self.owner, lease_ttl=self.ttl))
        if joined is None:
            return None
        return replace(task, id=joined[0], kind="join", step=node.name, attempt=1, token=joined[1],
                       status="running", context=None, fresh=False)

    def _join(self, task: Task) -> Task | None:
        wf = self._workflow(task)
        if wf is None:
            return None
        graph = wf.graph
        node = graph.nodes[task.step]
        assert not isinstance(node, StepDef) and hasattr(node, "steps")
        with self.pool.connection() as conn:
            ctx = as_context(conn.execute(q("run_context"), {"run_id": task.run_id}).fetchone()[0])  # type: ignore[index]
            rows = conn.execute(q("member_outcomes"), {"run_id": task.run_id,
                                                       "names": [s.name for s in node.steps]}).fetchall()
        results = {name: ("ok", output) if status == "succeeded" else ("error", (error or {}).get("message"))
                   for name, status, output, error in rows}
        started_at = datetime.now(UTC)
        try:
            if node.into is not None:
                new_ctx = node.into(ctx, results)
            else:
                new_ctx = assign(ctx, __results__={k: list(v) for k, v in results.items()})
            if not isinstance(new_ctx, Mapping):
                raise _BadOutput(f"into= of {node.name!r} returned {type(new_ctx).__name__}, expected a mapping")
            ctx_json = dumps(new_ctx, what=f"output of parallel {node.name!r}", limit=self.max_bytes)
        except Exception as exc:
            return self._fail(task, graph, node.name, error_of(node.name, exc), None)
        return self._advance(task, graph, None, node.name, new_ctx, ctx_json, started_at)

    def _call(self, step: StepDef, ctx: Any, rt: StepRuntime) -> Any:
        timeout = step.timeout_ms / 1000 if step.timeout_ms else None
        if step.is_async:
            async def runner() -> Any:
                token = bind(rt)
                try:
                    return await asyncio.wait_for(step.fn(ctx), timeout)
                except TimeoutError:
                    raise StepTimeout(f"step {step.name!r} ran longer than its timeout of {timeout}s") from None
                finally:
                    unbind(token)
            return asyncio.run_coroutine_threadsafe(runner(), self.loop).result()
        if timeout is None:
            token = bind(rt)
            try:
                return step.fn(ctx)
            finally:
                unbind(token)

        def timed() -> Any:
            bind(rt)
            return step.fn(ctx)

        fut = self._timeout_pool.submit(contextvars.copy_context().run, timed)
        try:
            return fut.result(timeout)
        except concurrent.futures.TimeoutError:
            # A thread cannot be killed: the attempt is failed now and its eventual result ignored.
            raise StepTimeout(f"step {step.name!r} ran longer than its timeout of {timeout}s") from None

    # -- failure and compensation -----------------------------------------------------------------

    def _compensations(self, conn: Any, task: Task, graph: Graph) -> list[str]:
        done = [r[0] for r in conn.execute(q("succeeded_steps"), {"run_id": task.run_id}).fetchall()]
        return [name for name in done if name in graph.steps and graph.steps[name].compensate]

    def _fail(self, task: Task, graph: Graph, step: str, err: dict[str, Any], started_at: datetime | None,
              final_status: str = "failed") -> Task | None:
        comps: list[str] = []

        def record(conn: Any) -> str | None:
            comps[:] = self._compensations(conn, task, graph)
            return cp.fail(conn, task, step=step, error=err, started_at=started_at, worker=self.owner,
                           compensations=comps, lease_ttl=self.ttl, final_status=final_status)

        token = self._checkpoint(record)
        if not comps:
            metrics.child(metrics.RUNS_FINISHED, graph.wf.name, final_status).inc()
            log.info("run ended", extra={"action": f"run_{final_status}", "run_id": task.run_id, "step": step})
        if token is None:
            return None
        return replace(task, kind="compensate", step=comps[0], attempt=1, token=token, status="compensating",
                       context=None, fresh=True)

    def _compensate(self, task: Task) -> Task | None:
        wf = self._workflow(task)
        if wf is None:
            return None
        graph = wf.graph
        comp = wf.compensations[graph.steps[task.step].compensate or ""]
        with self.pool.connection() as conn:
            ctx = as_context(conn.execute(q("run_context"), {"run_id": task.run_id}).fetchone()[0])  # type: ignore[index]
            order = self._compensations(conn, task, graph)
        remaining = order[order.index(task.step) + 1:] if task.step in order else []
        started_at = datetime.now(UTC)
        err = None
        try:
            self._call(comp, ctx, StepRuntime(str(task.run_id), comp.name))
        except Suspend:
            err = {"step": comp.name, "type": "DefinitionError", "message": "compensations cannot wait"}
        except Exception as exc:
            err = error_of(comp.name, exc)
            if comp.retry.should_retry(exc, task.attempt):
                delay = comp.retry.delay(task.attempt)
                failure = err
                self._checkpoint(lambda conn: cp.retry(conn, task, step=comp.name, error=failure, delay_ms=delay,
                                                       started_at=started_at, worker=self.owner,
                                                       kind="compensation"))
                return None
        outcome = err
        token = self._checkpoint(lambda conn: cp.compensated(
            conn, task, step=task.step, comp_name=comp.name, started_at=started_at, worker=self.owner,
            remaining=remaining, lease_ttl=self.ttl, error=outcome))
        if token is None:
            return None
        return replace(task, step=remaining[0], attempt=1, token=token, fresh=True)

    def _deadline(self, task: Task) -> Task | None:
        wf = self._workflow(task)
        if wf is None:
            return None
        if task.status == "compensating":
            with self.pool.connection() as conn:
                conn.execute(q("delete_task"), {"task_id": task.id, "token": task.token})
            return None
        err = {"step": None, "type": "WorkflowTimeout",
               "message": f"workflow {wf.name!r} exceeded its timeout of {(wf.timeout_ms or 0) / 1000:g}s"}
        return self._fail(task, wf.graph, "", err, None, final_status="timed_out")

    def _cron(self, task: Task) -> Task | None:
        with self.pool.connection() as conn:
            run_id = cp.fire_schedule(conn, task, catchup_hours=self.settings.worker.schedule_catchup_hours,
                                      next_after=next_tick)
        log.info("schedule fired", extra={"action": "schedule_fired", "schedule": task.schedule_name,
                                          "run_id": run_id})
        return None

