"""Announcing the runs a worker started, on ``durable_runs``, a few at a time.

A dispatch round that leases a pending or waiting run marks it running (``durable_lease_v3`` and later,
migration 0010) but does not notify: a notifying commit takes PostgreSQL's commit-time NOTIFY
lock and holds it through its WAL flush, so under load a round waited there behind the flushes
of other commits, on every new run's way to its first step. Instead, this thread announces the
runs started over the last ``delay`` in one notification-only commit, which flushes nothing and
is on no run's path.

Notifications are hints: a reader that misses one (a lost LISTEN connection, a worker killed
before announcing) still finds the state stored, on its next notification or poll.
"""

from __future__ import annotations

import logging
import threading

import psycopg
from psycopg_pool import ConnectionPool

from .db import q

log = logging.getLogger("durable.announce")


class RunAnnouncer:
    def __init__(self, pool: ConnectionPool, delay: float = 0.01) -> None:
        self.pool = pool
        self.delay = delay
        self._lock = threading.Lock()
        self._pending: list[str] = []
        self._due = threading.Event()
        self._stop = threading.Event()

    def add(self, run_ids: list[str]) -> None:
        """Announce these runs within ``delay``."""
        if not run_ids:
            return
        with self._lock:
            self._pending.extend(run_ids)
        self._due.set()

    def run(self) -> None:
        """The announcing thread. It sleeps ``delay`` after being woken rather than waiting on
        each ``add``, so a busy worker wakes it at most once per ``delay``."""
        while not self._stop.is_set():
            self._due.wait()
            self._due.clear()
            if self._stop.wait(self.delay):
                break
            self.flush()

    def flush(self) -> None:
        with self._lock:
            runs, self._pending = self._pending, []
        if not runs:
            return
        try:
            with self.pool.connection() as conn:
                conn.execute(q("announce_runs"), {"runs": runs})
        except psycopg.OperationalError as exc:
            # Hints only: the runs' state is stored, and the next notification or poll finds it.
            log.warning("could not announce started runs", extra={"action": "announce", "error": str(exc),
                                                                  "runs": len(runs)})

    def close(self) -> None:
        """Stop the thread; what is still pending goes out now."""
        self._stop.set()
        self._due.set()
        self.flush()
