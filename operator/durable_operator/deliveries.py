"""Exactly-once forwarding of ``spec.inputs`` and ``spec.events`` to runs.

Called by :mod:`runs` whenever a WorkflowRun's spec changes (and on resume). The engine's
``send_event`` / ``provide_input`` are not idempotent by themselves and the operator can die between
delivering and recording the delivery in ``status``. So each delivery commits, in ONE transaction,
a row ``(run_id, delivery key)`` into ``k8s_deliveries`` and the engine's own ``store.deliver``:
either both happen or neither, and a replayed delivery finds the row and is only recorded. The
status lists (``deliveredInputs`` / ``deliveredEvents``) are the user-facing record; the table is
the guard. The table lives in the engine's schema and is dropped with the run (ON DELETE CASCADE).
"""

from __future__ import annotations

import threading
from typing import Any

from psycopg import sql

from durable import Client
from durable.db import connect
from durable.store import deliver

_TABLE = sql.SQL(
    "CREATE TABLE IF NOT EXISTS k8s_deliveries ("
    " run_id uuid NOT NULL REFERENCES executions (id) ON DELETE CASCADE,"
    " delivery text NOT NULL,"
    " delivered_at timestamptz NOT NULL DEFAULT now(),"
    " PRIMARY KEY (run_id, delivery))")
_CLAIM = "INSERT INTO k8s_deliveries (run_id, delivery) VALUES (%s, %s) ON CONFLICT DO NOTHING RETURNING 1"


class Deliverer:
    """Delivers events and inputs through the client's connection pool, at most once per key and run."""

    def __init__(self, client: Client) -> None:
        self._client = client
        self._ready = False
        self._lock = threading.Lock()

    def _ensure_table(self) -> None:
        with self._lock:
            if self._ready:
                return
            with connect(self._client.url, self._client.settings.db) as conn, conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('durable_operator.k8s_deliveries'))")
                conn.execute(_TABLE)
            self._ready = True

    def deliver(self, run_id: str, kind: str, key: str, name: str, payload: Any) -> str:
        """Deliver ``kind`` ("input" or "event") ``name`` once for ``key``.

        Returns the engine's outcome (``"delivered"`` or ``"queued"``) or ``"duplicate"`` when this key
        was delivered before. Raises ``durable.RunNotActive`` (nothing recorded) if the run has ended.
        """
        self._ensure_table()
        with self._client._pool.connection() as conn, conn.transaction():
            if conn.execute(_CLAIM, (run_id, f"{kind}:{key}")).fetchone() is None:
                return "duplicate"
            return deliver(conn, run_id, kind, name, payload)
