"""Group commit led by the calling threads themselves: many threads' small writes, one transaction.

A thread that submits while another batch is committing queues its request and sleeps. When that
commit is done, its leader wakes its followers and hands the lead to the oldest queued request,
whose thread commits everything queued by then in one call, one transaction and one commit. A
lone request leads at once: an idle caller waits for nothing.

A commit is a WAL flush, holds PostgreSQL's commit-time NOTIFY lock through it and wakes every
listening backend, so under load k requests then cost one of each instead of k. No dedicated
committer thread: handing every request to one costs a GIL hand-off each way, which was slower
than the commits it saved.

Used by the worker's step checkpoints (``checkpoint.GroupCommit``) and by ``Client.start``.
"""

from __future__ import annotations

import threading
from typing import Any, Generic, TypeVar, cast

import psycopg

P = TypeVar("P")
R = TypeVar("R")

_PENDING: Any = object()


class Request(Generic[P]):
    """One caller's payload, and what its batch's leader found out about it."""

    __slots__ = ("done", "lead", "outcome", "payload")

    def __init__(self, payload: P) -> None:
        self.payload = payload
        # Held from birth; a leader releases it once our outcome is in, or to make us the next leader.
        self.done = threading.Lock()
        self.done.acquire()
        self.lead = False
        self.outcome: Any = _PENDING  # the result, or the exception to raise in the caller


class GroupCommit(Generic[P, R]):
    """Subclasses implement ``commit_one``, ``commit_many`` and ``order``."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queue: list[Request[P]] = []
        self._busy = False

    def submit(self, payload: P) -> R:
        """Commit ``payload`` (alone or with others); return its outcome, or raise its exception."""
        req = Request(payload)
        with self._lock:
            self._queue.append(req)
            lead = not self._busy
            self._busy = True
        if not lead:
            req.done.acquire()
            lead = req.lead
        if lead:
            self._lead(req)
        if isinstance(req.outcome, BaseException):
            raise req.outcome
        return cast(R, req.outcome)

    def commit_one(self, payload: P) -> R:
        """Record one request alone, in its own transaction."""
        raise NotImplementedError

    def commit_many(self, payloads: list[P]) -> list[Any]:
        """Record several in one call and one transaction; each one's result or exception, in order."""
        raise NotImplementedError

    def order(self, payload: P) -> Any:
        """The sort key of a batch: two processes' batches take their locks in one order, so they
        cannot deadlock each other."""
        raise NotImplementedError

    def commit(self, batch: list[Request[P]]) -> None:
        """Record ``batch``, setting each request's outcome; raises nothing a caller should not see."""
        if len(batch) == 1:
            req = batch[0]
            try:
                req.outcome = self.commit_one(req.payload)
            except Exception as exc:
                req.outcome = exc
            return
        batch.sort(key=lambda r: self.order(r.payload))
        try:
            outcomes = self.commit_many([r.payload for r in batch])
        except psycopg.OperationalError as exc:
            # Whether it committed is unknown, as for a lone request; each caller decides what next.
            for req in batch:
                req.outcome = psycopg.OperationalError(str(exc))
            return
        except Exception:
            # One bad request rolled back them all: record each alone, so it fails only itself.
            for req in batch:
                self.commit([req])
            return
        for req, outcome in zip(batch, outcomes, strict=True):
            req.outcome = outcome

    def _lead(self, me: Request[P]) -> None:
        with self._lock:
            batch, self._queue = self._queue, []
        try:
            self.commit(batch)
        finally:
            with self._lock:
                heir = self._queue[0] if self._queue else None
                if heir is None:
                    self._busy = False
                else:
                    heir.lead = True
            if heir is not None:
                heir.done.release()  # first: the database is the bottleneck, so keep it busy
            for req in batch:
                if req.outcome is _PENDING:
                    req.outcome = RuntimeError("the batch's leader failed; nothing is known of this request")
                if req is not me:
                    req.done.release()
