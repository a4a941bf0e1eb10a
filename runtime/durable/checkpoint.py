"""Checkpoint transactions: each step attempt ends in exactly one of these.

The executor decides what happened (advance, retry, fail, suspend, fan out, join); this module
records it atomically, guarded by the task's lease token so a worker that lost its lease can
never record a result. When the next task is ready and runs on the same queue, the checkpoint
leases it to the same worker (the fast path): one commit per step, no queue round trip; under
load, one commit for the steps several slots finished meanwhile (``GroupCommit``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from psycopg_pool import ConnectionPool

from . import groupcommit
from .db import q
from .jsonutil import dumps, rows_with_json_last
from .store import Conn, finish_run, record_all_progress, resolve_wait, start_run
from .tasks import Task
from .waits import WaitRequest


class LeaseLost(Exception):
    """The task was taken by someone else (lease expired, run cancelled or timed out)."""


def _guard(conn: Conn, task: Task) -> tuple[Any, ...]:
    """Lock the run, then check our lease; both in this order everywhere, so no deadlock."""
    run = conn.execute(q("lock_execution"), {"run_id": task.run_id}).fetchone()
    if run is None or conn.execute(q("guard_task"), {"task_id": task.id, "token": task.token}).fetchone() is None:
        raise LeaseLost(task.id)
    return tuple(run)


def _record(conn: Conn, task: Task, name: str, *, status: str, started_at: datetime, worker: str,
            output_json: str | None = None, error: dict[str, Any] | None = None, final: bool = True,
            kind: str = "step") -> None:
    conn.execute(q("insert_step"), {
        "run_id": task.run_id, "name": name, "kind": kind, "attempt": task.attempt, "status": status,
        "final": final, "output": output_json, "error": dumps(error, what="error") if error else None,
        "worker": worker, "started_at": started_at})


def _move(conn: Conn, task: Task, *, kind: str, step: str, queue: str, lease_ttl: int, keep: bool) -> str | None:
    """Point our task row at the next thing to do; keep the lease (fast path) or hand it to the queue."""
    new_token = str(uuid.uuid4()) if keep else None
    row = conn.execute(q("advance_task"), {"kind": kind, "step": step, "queue": queue, "new_token": new_token,
                                           "ttl": lease_ttl, "task_id": task.id, "token": task.token}).fetchone()
    if row is None:
        raise LeaseLost(task.id)
    if not keep:
        conn.execute(q("notify_tasks"), {"queue": queue})
    return new_token


def advance(conn: Conn, task: Task, *, step: str | None, next_node: str | None, next_queue: str,
            ctx_json: str | None, started_at: datetime, worker: str, lease_ttl: int,
            new_token: str | None) -> str | None:
    """Record a finished step (``step`` None for a join) and move to ``next_node``, or finish the run.

    ``new_token`` keeps the next task leased to us (the fast path). One function call, one round
    trip, one commit (see migrations 0003 and 0006); several at once go through ``GroupCommit``."""
    params = {"task_id": task.id, "token": task.token, "run_id": task.run_id, "step": step,
              "attempt": task.attempt, "context": ctx_json, "worker": worker, "started_at": started_at}
    if next_node is None:
        if not conn.execute(q("succeed_v2"), params).fetchone()[0]:  # type: ignore[index]
            raise LeaseLost(task.id)
        return None
    row = conn.execute(q("advance_v1"), {**params, "next": next_node, "next_queue": next_queue,
                                         "new_token": new_token, "ttl": lease_ttl}).fetchone()
    if not row[0]:  # type: ignore[index]
        raise LeaseLost(task.id)
    return new_token


@dataclass(eq=False, slots=True)
class _Advance:
    task: Task
    step: str | None
    next_node: str | None
    next_queue: str
    ctx_json: str | None
    started_at: datetime
    new_token: str | None
    offer: int | None  # the worker slot to offer in the same commit (the chain ends here)


def _batch_json(items: list[_Advance]) -> str:
    """The batch as ``durable_checkpoint_batch_v3`` takes it, each context last."""
    return rows_with_json_last(([a.task.id, a.task.token, a.task.run_id, a.step, a.task.attempt,
                                 a.started_at.isoformat(), a.next_node, a.next_queue, a.new_token], a.ctx_json)
                               for a in items)


class GroupCommit(groupcommit.GroupCommit[_Advance, "str | None"]):
    """Group commit of the worker's step checkpoints (``advance``), led by the slot threads themselves
    (see ``groupcommit``): everything queued behind a committing checkpoint goes in one call and one
    commit (migrations 0005 to 0007), each run still with exactly its own step's checkpoint, so every
    step is still recorded in exactly one transaction, and no slot runs its next step before its
    checkpoint is durable."""

    def __init__(self, pool: ConnectionPool, worker: str, lease_ttl: int) -> None:
        super().__init__()
        self.pool = pool
        self.worker = worker
        self.lease_ttl = lease_ttl

    def advance(self, task: Task, *, step: str | None, next_node: str | None, next_queue: str,
                ctx_json: str | None, started_at: datetime, keep: bool, offer: int | None = None) -> str | None:
        """As ``advance``; raises LeaseLost for this run alone, whatever happened to the others.
        ``offer``: a worker slot offered to new runs in the same commit (migration 0012)."""
        return self.submit(_Advance(task, step, next_node, next_queue, ctx_json, started_at,
                                    str(uuid.uuid4()) if keep and next_node is not None else None, offer))

    def commit_one(self, a: _Advance) -> str | None:
        if a.offer is not None:
            out = self.commit_many([a])[0]
            if isinstance(out, LeaseLost):
                raise out
            return out  # type: ignore[no-any-return]
        with self.pool.connection() as conn:
            return advance(conn, a.task, step=a.step, next_node=a.next_node, next_queue=a.next_queue,
                           ctx_json=a.ctx_json, started_at=a.started_at, worker=self.worker,
                           lease_ttl=self.lease_ttl, new_token=a.new_token)

    def commit_many(self, items: list[_Advance]) -> list[Any]:
        with self.pool.connection() as conn:
            row = conn.execute(q("checkpoint_batch_v4"), {
                "batch": _batch_json(items), "worker": self.worker, "ttl": self.lease_ttl,
                "offer": [a.offer for a in items if a.offer is not None]}).fetchone()
        oks = row[0]  # type: ignore[index]
        return [a.new_token if ok else LeaseLost(a.task.id) for a, ok in zip(items, oks, strict=True)]

    def order(self, a: _Advance) -> Any:
        return str(a.task.run_id)  # executions rows are locked in run id order


def retry(conn: Conn, task: Task, *, step: str, error: dict[str, Any], delay_ms: int, started_at: datetime,
          worker: str, kind: str = "step") -> None:
    with conn.transaction():
        run = _guard(conn, task)
        _record(conn, task, step, status="failed", started_at=started_at, worker=worker, error=error,
                final=False, kind=kind)
        conn.execute(q("retry_task"), {"delay": delay_ms / 1000, "task_id": task.id, "token": task.token})
        conn.execute(q("save_context"), {"context": None, "step": task.step, "attempt": task.attempt + 1,
                                         "status": run[2], "run_id": task.run_id})
        conn.execute(q("notify_tasks"), {"queue": task.queue})
        conn.execute(q("notify_run"), {"run_id": task.run_id})


def fail(conn: Conn, task: Task, *, step: str, error: dict[str, Any], started_at: datetime | None, worker: str,
         compensations: list[str], lease_ttl: int, final_status: str = "failed") -> str | None:
    """A step failed for good (or the deadline passed): start compensations, or end the run.

    ``compensations`` lists the forward steps to undo, most recent first. Returns a token when the
    first compensation was leased to us.
    """
    with conn.transaction():
        _guard(conn, task)
        if started_at is not None:
            _record(conn, task, step, status="failed", started_at=started_at, worker=worker, error=error)
        if not compensations:
            finish_run(conn, str(task.run_id), final_status, error=error)
            return None
        conn.execute(q("delete_run_tasks_except"), {"run_id": task.run_id, "task_id": task.id})
        conn.execute(q("clear_run_waits"), {"run_id": task.run_id})
        error = {**error, "final_status": final_status}
        conn.execute(q("set_error"), {"error": dumps(error, what="error"), "status": "compensating",
                                      "run_id": task.run_id})
        token = _move(conn, task, kind="compensate", step=compensations[0], queue=task.queue,
                      lease_ttl=lease_ttl, keep=True)
        conn.execute(q("notify_run"), {"run_id": task.run_id})
        return token


def compensated(conn: Conn, task: Task, *, step: str, comp_name: str, started_at: datetime, worker: str,
                remaining: list[str], lease_ttl: int, error: dict[str, Any] | None = None) -> str | None:
    """Record one compensation's outcome; lease the next one or end the run."""
    with conn.transaction():
        run = _guard(conn, task)
        run_error = dict(run[9] or {})
        _record(conn, task, comp_name, kind="compensation", status="failed" if error else "succeeded",
                started_at=started_at, worker=worker, error=error)
        if error is not None:
            run_error["compensation"] = error
            conn.execute(q("delete_task"), {"task_id": task.id, "token": task.token})
            finish_run(conn, str(task.run_id), "failed", error=run_error)
            return None
        if remaining:
            return _move(conn, task, kind="compensate", step=remaining[0], queue=task.queue, lease_ttl=lease_ttl,
                         keep=True)
        conn.execute(q("delete_task"), {"task_id": task.id, "token": task.token})
        final = run_error.pop("final_status", "failed")
        finish_run(conn, str(task.run_id), "compensated" if final == "failed" else final, error=run_error)
        return None


def rename_step(conn: Conn, task: Task, step: str) -> None:
    """A branch resolved to one of its case steps: address the task by that step from now on."""
    with conn.transaction():
        _guard(conn, task)
        conn.execute(q("rename_task"), {"step": step, "task_id": task.id, "token": task.token})
        conn.execute(q("save_context"), {"context": None, "step": step, "attempt": task.attempt,
                                         "status": "running", "run_id": task.run_id})
        conn.execute(q("notify_run"), {"run_id": task.run_id})


def suspend(conn: Conn, task: Task, *, step: str, request: WaitRequest, queue: str, lease_ttl: int,
            max_bytes: int) -> str | None:
    """Park the step on a wait. If the wait can be satisfied right now (mail already there, a past
    timer, a child started without waiting) resolve it and keep the lease: returns the new token."""
    with conn.transaction():
        run = _guard(conn, task)
        run_id = str(task.run_id)
        conn.execute(q("insert_wait"), {
            "run_id": run_id, "step": step, "idx": request.idx, "kind": request.kind, "names": request.names,
            "prompt": request.prompt, "until": request.until, "has_timeout_value": request.has_timeout_value,
            "timeout_value": dumps(request.timeout_value, what="timeout_value"), "queue": queue})
        state = conn.execute(q("wait_row"), {"run_id": run_id, "step": step, "idx": request.idx}).fetchone()
        status, received, until, child_id = state  # type: ignore[misc]
        if status == "open":
            _satisfy(conn, run, task, step, request, received, child_id, queue, max_bytes)
            state = conn.execute(q("wait_row"), {"run_id": run_id, "step": step, "idx": request.idx}).fetchone()
            status = state[0]  # type: ignore[index]
        if status != "open":
            token = str(uuid.uuid4())
            conn.execute(q("relock_task"), {"new_token": token, "ttl": lease_ttl, "task_id": task.id,
                                            "token": task.token})
            return token
        if until is not None:
            conn.execute(q("park_task"), {"due_at": until, "task_id": task.id, "token": task.token})
            conn.execute(q("notify_tasks"), {"queue": queue})
        else:
            conn.execute(q("delete_task"), {"task_id": task.id, "token": task.token})
        _mark_waiting_when_idle(conn, run, task)
        conn.execute(q("notify_run"), {"run_id": run_id})
        return None


def _mark_waiting_when_idle(conn: Conn, run: tuple[Any, ...], task: Task) -> None:
    """Our task is parked or gone: a running run with no other task ready or leased is waiting."""
    others = conn.execute(q("count_other_ready_tasks"), {"run_id": task.run_id, "task_id": task.id}).fetchone()
    if run[2] in ("running", "pending") and not others[0]:  # type: ignore[index]
        conn.execute(q("set_status"), {"status": "waiting", "run_id": task.run_id})


def _satisfy(conn: Conn, run: tuple[Any, ...], task: Task, step: str, request: WaitRequest,
             received: dict[str, Any], child_id: Any, queue: str, max_bytes: int) -> None:
    run_id = str(task.run_id)

    def resolve(status: str, value_json: str | None) -> None:
        resolve_wait(conn, run_id, step, request.idx, status=status, value_json=value_json, queue=queue)
    if request.kind in ("child", "child_start") and child_id is None:
        child = request.child or {}
        input_json = dumps(child.get("input"), what="child input", limit=max_bytes)
        cid, _ = start_run(conn, child["workflow"], input_json, priority=run[4],
                           idempotency_key=f"child:{run_id}:{step}:{request.idx}",
                           parent=(run_id, step, request.idx))
        conn.execute(q("set_wait_child"), {"child_id": cid, "run_id": run_id, "step": step, "idx": request.idx})
        if request.kind == "child_start":
            resolve("resolved", dumps(cid, what="child"))
        return
    if request.kind == "sleep" and request.until is not None and request.until <= _now(conn):
        resolve("timed_out", None)
        return
    mail_kind = {"event": "event", "any": "event", "all": "event", "input": "input", "approval": "input"}
    if request.kind not in mail_kind:
        return
    if request.kind == "all":
        got = dict(received)
        for name in request.names:
            if name in got:
                continue
            mail = conn.execute(q("take_mail"), {"run_id": run_id, "kind": "event", "names": [name]}).fetchone()
            if mail:
                got[name] = mail[1]
        if got != received:
            record_all_progress(conn, run_id, step, request.idx, request.names, got, queue)
        return
    mail = conn.execute(q("take_mail"), {"run_id": run_id, "kind": mail_kind[request.kind],
                                         "names": request.names}).fetchone()
    if mail:
        value = [mail[0], mail[1]] if request.kind == "any" else mail[1]
        resolve("resolved", dumps(value, what="payload"))


def _now(conn: Conn) -> datetime:
    return conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index,no-any-return]


def time_out_waits(conn: Conn, task: Task, journal: list[tuple[Any, ...]]) -> bool:
    """Mark open waits whose ``until`` has passed as timed out. True if any changed."""
    changed = False
    for idx, _kind, _names, status, _value, until, *_ in journal:
        if status == "open" and until is not None:
            row = conn.execute(q("time_out_wait"), {"run_id": task.run_id, "step": task.step, "idx": idx}).fetchone()
            changed = changed or row is not None
    if changed:
        conn.execute(q("notify_run"), {"run_id": task.run_id})
    return changed


def fan_out(conn: Conn, task: Task, *, node: str, members: list[tuple[str, str]], limit: int | None) -> None:
    """Enter a parallel block: enqueue its first ``limit`` members, each with the same context."""
    with conn.transaction():
        _guard(conn, task)
        conn.execute(q("delete_task"), {"task_id": task.id, "token": task.token})
        for name, queue in members[: limit or len(members)]:
            conn.execute(q("insert_task"), {"run_id": task.run_id, "kind": "step", "step": name, "queue": queue,
                                            "priority": task.priority, "due_at": None})
            conn.execute(q("notify_tasks"), {"queue": queue})
        conn.execute(q("save_context"), {"context": None, "step": node, "attempt": 1, "status": "running",
                                         "run_id": task.run_id})
        conn.execute(q("notify_run"), {"run_id": task.run_id})


def member_done(conn: Conn, task: Task, *, step: str, node: str, members: list[tuple[str, str]],
                limit: int | None, status: str, output_json: str | None, error: dict[str, Any] | None,
                started_at: datetime, worker: str, lease_ttl: int) -> tuple[int, str] | None:
    """Record a parallel member's final outcome; start the next member or, when all are done,
    lease the join to ourselves (returns its task id and token)."""
    with conn.transaction():
        run = _guard(conn, task)
        _record(conn, task, step, status=status, started_at=started_at, worker=worker, output_json=output_json,
                error=error)
        conn.execute(q("delete_task"), {"task_id": task.id, "token": task.token})
        names = [m[0] for m in members]
        done = {r[0] for r in conn.execute(q("member_outcomes"), {"run_id": task.run_id, "names": names})}
        if len(done) == len(names):
            token = str(uuid.uuid4())
            row = conn.execute(q("insert_leased_task"), {
                "run_id": task.run_id, "kind": "join", "step": node, "queue": task.queue,
                "priority": task.priority, "token": token, "owner": worker, "ttl": lease_ttl}).fetchone()
            return (int(row[0]), token) if row else None
        in_flight = {r[0] for r in conn.execute(q("member_tasks"), {"run_id": task.run_id, "names": names})}
        pending = [m for m in members if m[0] not in done and m[0] not in in_flight]
        if pending and (limit is None or len(in_flight) < limit):
            name, queue = pending[0]
            conn.execute(q("insert_task"), {"run_id": task.run_id, "kind": "step", "step": name, "queue": queue,
                                            "priority": task.priority, "due_at": None})
            conn.execute(q("notify_tasks"), {"queue": queue})
        else:
            _mark_waiting_when_idle(conn, run, task)  # every member left may be parked on a wait
        conn.execute(q("notify_run"), {"run_id": task.run_id})
        return None


def fire_schedule(conn: Conn, task: Task, *, catchup_hours: int, next_after: Any) -> str | None:
    """Start the run for a cron tick (idempotent by tick time) and re-arm the timer for the next tick."""
    from datetime import timedelta

    with conn.transaction():
        sched = conn.execute(q("get_schedule"), {"name": task.schedule_name}).fetchone()
        if conn.execute(q("guard_task"), {"task_id": task.id, "token": task.token}).fetchone() is None:
            raise LeaseLost(task.id)
        if sched is None:
            conn.execute(q("delete_task"), {"task_id": task.id, "token": task.token})
            return None
        name, workflow, cron, tz, input_, queue, tick, _last = sched
        now = _now(conn)
        run_id = None
        if now - tick <= timedelta(hours=catchup_hours):
            run_id, _ = start_run(conn, workflow, dumps(input_, what="input"), queue=queue,
                                  idempotency_key=f"schedule:{name}:{int(tick.timestamp())}")
        nxt = next_after(cron, tz, tick)
        conn.execute(q("advance_schedule"), {"fired": tick, "next": nxt, "name": name})
        conn.execute(q("reschedule_cron_task"), {"due_at": nxt, "task_id": task.id, "token": task.token})
        conn.execute(q("notify_tasks"), {"queue": queue})
        return run_id
