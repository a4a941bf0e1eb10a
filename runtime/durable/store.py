"""Run-level storage operations shared by the client and the executor.

Every function takes an open connection inside a transaction (the caller owns commit), so a
checkpoint can combine several of them into its one transaction.
"""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg

from .db import q
from .errors import InvalidInput, RunNotActive, RunNotFound, UnknownQueue, WorkflowNotFound
from .ids import new_run_id
from .jsonutil import dumps

ACTIVE = ("pending", "running", "waiting", "compensating")
TERMINAL = ("succeeded", "failed", "cancelled", "compensated", "timed_out")
EVENT_KINDS = ["event", "any", "all"]
INPUT_KINDS = ["input", "approval"]

Conn = psycopg.Connection[Any]


def register_workflow(conn: Conn, name: str, hash_: str, first_step: str, graph: dict[str, Any]) -> None:
    conn.execute(q("upsert_workflow"), {"name": name, "hash": hash_, "first_step": first_step,
                                        "graph": dumps(graph, what="graph")})
    queues = sorted({graph.get("queue", "default"), *graph.get("queues", [])})
    conn.execute(q("upsert_queues"), {"names": queues})


def register_queues(conn: Conn, names: list[str]) -> None:
    conn.execute(q("upsert_queues"), {"names": sorted(set(names))})


class CacheMiss(LookupError):
    """A cache-only lookup (no connection given) found nothing fresh: look it up with a connection."""


class DefinitionCache:
    """Positive lookups of workflows and queues, kept briefly: starting a run then costs one round
    trip. Misses always go to the database, so an unknown name is never accepted from the cache."""

    def __init__(self, ttl: float = 5.0) -> None:
        self.ttl = ttl
        self._workflows: dict[str, tuple[float, tuple[Any, ...]]] = {}
        self._queues: dict[str, float] = {}

    def workflow(self, conn: Conn | None, name: str) -> tuple[Any, ...]:
        """The definition row; with no connection, only from the cache (else ``CacheMiss``)."""
        hit = self._workflows.get(name)
        if hit and time.monotonic() - hit[0] < self.ttl:
            return hit[1]
        if conn is None:
            raise CacheMiss(name)
        row = conn.execute(q("get_workflow"), {"name": name}).fetchone()
        if row is None:
            known = [r[0] for r in conn.execute(q("list_workflow_names")).fetchall()]
            raise WorkflowNotFound(
                f"unknown workflow {name!r}; registered workflows: {', '.join(known) or '(none)'} "
                "(a worker registers the workflows of its --app modules when it starts)")
        self._workflows[name] = (time.monotonic(), tuple(row))
        return tuple(row)

    def check_queue(self, conn: Conn | None, name: str) -> None:
        seen = self._queues.get(name)
        if seen and time.monotonic() - seen < self.ttl:
            return
        if conn is None:
            raise CacheMiss(name)
        if not conn.execute(q("queue_exists"), {"name": name}).fetchone()[0]:  # type: ignore[index]
            known = [r[0] for r in conn.execute(q("list_queue_names")).fetchall()]
            raise UnknownQueue(f"unknown queue {name!r}; known queues: {', '.join(known)}")
        self._queues[name] = time.monotonic()


def start_params(conn: Conn | None, workflow: str, input_json: str, *, queue: str | None = None,
                 scheduled_at: datetime | None = None, idempotency_key: str | None = None, priority: int = 0,
                 parent: tuple[str, str, int] | None = None, cache: DefinitionCache | None = None,
                 run_id: str | None = None) -> dict[str, Any]:
    """Check a start and return the arguments of ``start_v1`` for it. With ``conn`` None, only what
    ``cache`` holds is used (``CacheMiss`` otherwise), so a start can be checked without a connection."""
    cache = cache or DefinitionCache(ttl=0)
    _, hash_, first_step, graph = cache.workflow(conn, workflow)
    queue = queue or graph.get("queue") or "default"
    cache.check_queue(conn, queue)
    if not isinstance(priority, int) or isinstance(priority, bool):
        raise InvalidInput(f"priority must be an integer, got {priority!r}")
    if scheduled_at is not None and scheduled_at.tzinfo is None:
        scheduled_at = scheduled_at.replace(tzinfo=UTC)
    timeout_ms = graph.get("timeout_ms")
    base = scheduled_at or datetime.now(UTC)
    deadline = base + timedelta(milliseconds=timeout_ms) if timeout_ms else None
    return {
        "id": run_id or new_run_id(), "workflow": workflow, "hash": hash_, "queue": queue, "priority": priority,
        "input": input_json, "first_step": first_step, "idempotency_key": idempotency_key,
        "parent_id": parent[0] if parent else None, "parent_step": parent[1] if parent else None,
        "parent_wait_idx": parent[2] if parent else None, "scheduled_at": scheduled_at, "deadline": deadline,
    }


def start_run(conn: Conn, workflow: str, input_json: str, *, queue: str | None = None,
              scheduled_at: datetime | None = None, idempotency_key: str | None = None, priority: int = 0,
              parent: tuple[str, str, int] | None = None, cache: DefinitionCache | None = None,
              run_id: str | None = None) -> tuple[str, bool]:
    """Create a run (or return the existing one for ``idempotency_key``). Returns ``(run_id, created)``;
    ``run_id`` chooses the new run's id (a caller may need to know it before the run exists).

    One round trip once the definition is cached; safe inside or outside a transaction."""
    params = start_params(conn, workflow, input_json, queue=queue, scheduled_at=scheduled_at,
                          idempotency_key=idempotency_key, priority=priority, parent=parent, cache=cache,
                          run_id=run_id)
    row = conn.execute(q("start_v1"), params).fetchone()
    return str(row[0]), bool(row[1])  # type: ignore[index]


def check_run_id(run_id: str) -> None:
    """Refuse a malformed id before it reaches SQL (where it would be a cast error, not "not found")."""
    try:
        uuid.UUID(str(run_id))
    except ValueError:
        raise RunNotFound(f"{run_id!r} is not a run id (a UUID)") from None


def lock_run(conn: Conn, run_id: str) -> tuple[Any, ...]:
    check_run_id(run_id)
    row = conn.execute(q("lock_execution"), {"run_id": run_id}).fetchone()
    if row is None:
        raise RunNotFound(f"no run with id {run_id}")
    return tuple(row)


def finish_run(conn: Conn, run_id: str, status: str, *, result_json: str | None = None,
               error: dict[str, Any] | None = None, context_json: str | None = None) -> None:
    """Move a run to a terminal status, drop its pending work, and wake a waiting parent."""
    row = conn.execute(q("finish_execution"), {
        "run_id": run_id, "status": status, "result": result_json,
        "error": dumps(error, what="error") if error is not None else None, "context": context_json,
    }).fetchone()
    conn.execute(q("delete_run_tasks"), {"run_id": run_id})
    conn.execute(q("clear_run_waits"), {"run_id": run_id})
    conn.execute(q("clear_mailbox"), {"run_id": run_id})
    conn.execute(q("notify_run"), {"run_id": run_id})
    # Only terminal transitions, so Client.wait wakes once per run rather than once per step.
    conn.execute(q("notify_finished"), {"run_id": run_id})
    if row is not None and row[0] is not None:
        _resolve_parent(conn, run_id, status, result_json, error)


def _resolve_parent(conn: Conn, child_id: str, status: str, result_json: str | None,
                    error: dict[str, Any] | None) -> None:
    for parent_id, step, idx, queue in conn.execute(q("parent_wait_of_child"), {"child_id": child_id}).fetchall():
        ok = status == "succeeded"
        message = None if ok else f"child run {child_id} ended {status}: {(error or {}).get('message', '')}"
        resolve_wait(conn, str(parent_id), step, idx, status="resolved" if ok else "failed",
                     value_json=result_json if ok else dumps(message, what="error"), queue=queue)


def record_all_progress(conn: Conn, run_id: str, step: str, idx: int, names: list[str], received: dict[str, Any],
                        queue: str) -> None:
    """Store what a ``wait_for_all`` has received so far, resolving it once every name is in."""
    done = all(n in received for n in names)
    received_json = dumps(received, what="payload")
    resolve_wait(conn, run_id, step, idx, status="resolved" if done else "open",
                 value_json=received_json if done else None, queue=queue, received_json=received_json)


def resolve_wait(conn: Conn, run_id: str, step: str, idx: int, *, status: str, value_json: str | None,
                 queue: str, received_json: str | None = None) -> bool:
    """Resolve an open wait and make its step runnable now. False if it was no longer open."""
    row = conn.execute(q("resolve_wait"), {"run_id": run_id, "step": step, "idx": idx, "status": status,
                                           "value": value_json, "received": received_json}).fetchone()
    if row is None:
        return False
    if status != "open":
        conn.execute(q("wake_step"), {"run_id": run_id, "step": step, "queue": queue})
        conn.execute(q("notify_tasks"), {"queue": queue})
    conn.execute(q("notify_run"), {"run_id": run_id})
    return True


def deliver(conn: Conn, run_id: str, kind: str, name: str, payload: Any, delivery_id: str | None = None) -> str:
    """Deliver an event or input: resolve a matching open wait, or keep it in the mailbox.

    Returns ``"delivered"`` or ``"queued"`` (or, for a ``delivery_id`` seen before, the outcome it
    had then). Runs under the run's row lock so a wait being created concurrently cannot miss it.
    """
    if not isinstance(name, str) or not name:
        raise InvalidInput(f"{kind} name must be a non-empty string, got {name!r}")
    payload_json = dumps(payload, what=f"{kind} {name!r} payload")
    _, workflow, status, *_ = lock_run(conn, run_id)
    if delivery_id is not None:
        key = {"run_id": run_id, "delivery_id": delivery_id}
        if conn.execute(q("claim_delivery"), key).fetchone() is None:
            return str(conn.execute(q("delivery_outcome"), key).fetchone()[0])  # type: ignore[index]
        outcome = _deliver(conn, run_id, workflow, status, kind, name, payload, payload_json)
        conn.execute(q("set_delivery_outcome"), {**key, "outcome": outcome})
        return outcome
    return _deliver(conn, run_id, workflow, status, kind, name, payload, payload_json)


def _deliver(conn: Conn, run_id: str, workflow: str, status: str, kind: str, name: str, payload: Any,
             payload_json: str) -> str:
    if status in TERMINAL:
        raise RunNotActive(f"run {run_id} ({workflow}) has already ended {status}; {kind} {name!r} not delivered")
    kinds = EVENT_KINDS if kind == "event" else INPUT_KINDS
    wait = conn.execute(q("open_wait_for"), {"run_id": run_id, "kinds": kinds, "name": name}).fetchone()
    if wait is None:
        conn.execute(q("put_mail"), {"run_id": run_id, "kind": kind, "name": name, "payload": payload_json})
        conn.execute(q("notify_run"), {"run_id": run_id})
        return "queued"
    step, idx, wkind, names, received, queue = wait
    if wkind == "all":
        record_all_progress(conn, run_id, step, idx, names, {**received, name: payload}, queue)
    else:
        value = [name, payload] if wkind == "any" else payload
        resolve_wait(conn, run_id, step, idx, status="resolved", value_json=dumps(value, what="payload"),
                     queue=queue)
    return "delivered"


def cancel_run(conn: Conn, run_id: str, reason: str | None) -> bool:
    """Cancel an active run. False (and nothing changed) when it had already ended."""
    _, _, status, *_ = lock_run(conn, run_id)
    if status in TERMINAL:
        return False
    finish_run(conn, run_id, "cancelled",
               error={"step": None, "type": "Cancelled", "message": reason or "cancelled"})
    return True
