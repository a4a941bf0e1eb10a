"""Group commit of single-statement writes: step checkpoints in a worker, run starts in a client.

Threads hand their calls (each one SQL function call) to one committer thread,
which sends everything queued in one pipelined transaction: under load many checkpoints share a
commit and one acquisition of PostgreSQL's notification lock; a lone checkpoint goes straight
through, so sequential latency does not grow. Each call returns its own result; a lease lost by
one never affects another, because the functions report it as ``false`` rather than raising.
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future
from typing import Any

from psycopg_pool import ConnectionPool

from .db import q

log = logging.getLogger("durable.batch")
_Item = tuple[str, dict[str, Any], "Future[Any]"]


class CheckpointBatcher:
    def __init__(self, pool: ConnectionPool, max_batch: int = 64) -> None:
        self.pool = pool
        self.max_batch = max_batch
        self._queue: queue.SimpleQueue[_Item | None] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="durable-committer", daemon=True)
        self._thread.start()

    def call(self, query: str, params: dict[str, Any]) -> tuple[Any, ...]:
        """Run named query ``query`` in the next group commit and return its one row; re-raises its error."""
        fut: Future[Any] = Future()
        self._queue.put((query, params, fut))
        return tuple(fut.result())

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(5)

    def _run(self) -> None:
        while True:
            first = self._queue.get()
            if first is None:
                return
            items = [first]
            while len(items) < self.max_batch:
                try:
                    nxt = self._queue.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self._queue.put(None)
                    break
                items.append(nxt)
            try:
                results = self._commit(items)
            except Exception as exc:
                if len(items) == 1:
                    items[0][2].set_exception(exc)
                    continue
                # One bad item must not fail its neighbours: retry each on its own.
                for item in items:
                    try:
                        item[2].set_result(self._commit([item])[0])
                    except Exception as single:
                        item[2].set_exception(single)
                continue
            for (_, _, fut), result in zip(items, results, strict=True):
                fut.set_result(result)

    def _commit(self, items: list[_Item]) -> list[Any]:
        with self.pool.connection() as conn:
            if len(items) == 1:
                name, params, _ = items[0]
                return [conn.execute(q(name), params).fetchone()]
            with conn.pipeline(), conn.transaction():
                cursors = [conn.execute(q(name), params) for name, params, _ in items]
                return [cur.fetchone() for cur in cursors]
