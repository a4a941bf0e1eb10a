"""Connections and named queries: the only module that knows how to reach PostgreSQL.

The store, the migrator, the worker and the client all get their connections here. Without
``DURABLE_DATABASE_URL`` an embedded PostgreSQL (the ``pgserver`` wheel) is started on demand.
"""

from __future__ import annotations

import logging
import random
import re
import time
import warnings
import weakref
from collections.abc import Callable
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import psycopg
from psycopg.rows import tuple_row
from psycopg_pool import ConnectionPool

from .settings import DatabaseSettings

log = logging.getLogger("durable.db")
T = TypeVar("T")
_NAME_RE = re.compile(r"^-- name: (\w+)\s*$", re.M)


@cache
def queries() -> dict[str, str]:
    text = resources.files("durable").joinpath("sql/queries.sql").read_text()
    parts = _NAME_RE.split(text)
    return {name: _body(sql) for name, sql in zip(parts[1::2], parts[2::2], strict=True)}


def _body(sql: str) -> str:
    # A query's leading comment documents it in queries.sql; the server (and pg_stat_activity) get the SQL.
    lines = sql.strip().splitlines()
    while lines and lines[0].lstrip().startswith("--"):
        lines.pop(0)
    return "\n".join(lines).strip().rstrip(";")


def q(name: str) -> str:
    return queries()[name]


def embedded_url(data_dir: str) -> str:
    """Start (or reuse) the embedded PostgreSQL under ``data_dir`` and return its URL."""
    try:
        with warnings.catch_warnings():
            # platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI); the fallback is fine.
            warnings.simplefilter("ignore")
            import pgserver
    except ImportError:
        raise RuntimeError(
            "DURABLE_DATABASE_URL is not set and the embedded PostgreSQL is not installed; "
            "pip install 'durable[embedded]' or set DURABLE_DATABASE_URL") from None
    path = Path(data_dir).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    # cleanup_mode=None: the server outlives this process, so `durable dev`, the CLI and workers share it.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        server = pgserver.get_server(path, cleanup_mode=None)  # type: ignore[attr-defined]
    return str(server.get_uri())


def resolve_url(settings: DatabaseSettings) -> str:
    return settings.url or embedded_url(settings.embedded_dir)


def connect_kwargs(settings: DatabaseSettings) -> dict[str, Any]:
    # search_path puts our schema first so queries stay unqualified and the schema configurable.
    # Autocommit: every multi-statement unit of work opens its own explicit transaction.
    return {"options": f"-c search_path={settings.schema},public", "row_factory": tuple_row, "autocommit": True}


def connect(url: str, settings: DatabaseSettings) -> psycopg.Connection[Any]:
    return psycopg.connect(url, **connect_kwargs(settings))


_IDLE_CHECK_SECONDS = 1.0


class _CheckedPool(ConnectionPool):
    """Tests a connection before lending it only when it has been idle a while: one used a moment
    ago is alive, and testing every one costs a round trip per call on busy clients, while idle
    ones may have died with a restarted server.

    The return time is stamped here, in the returning thread. (A pool ``reset`` callback could
    stamp it too, but then psycopg_pool hands every returned connection to its worker thread:
    a thread hop per call, which was a sixth of a busy client's CPU.)"""

    def __init__(self, url: str, **kwargs: Any) -> None:
        self._returned_at: weakref.WeakKeyDictionary[psycopg.Connection[Any], float] = weakref.WeakKeyDictionary()
        super().__init__(url, check=self._check_if_idle, **kwargs)

    def putconn(self, conn: psycopg.Connection[Any]) -> None:
        self._returned_at[conn] = time.monotonic()
        super().putconn(conn)

    def _check_if_idle(self, conn: psycopg.Connection[Any]) -> None:
        if time.monotonic() - self._returned_at.get(conn, 0.0) > _IDLE_CHECK_SECONDS:
            ConnectionPool.check_connection(conn)


def make_pool(url: str, settings: DatabaseSettings, *, size: int, name: str,
              check: bool = False) -> ConnectionPool:
    """A short ``timeout`` lets callers waiting for a connection during an outage fall back to their
    own retry loops; ``check`` tests a connection idle for a while before lending it (clients,
    whose connections may sit idle across a server restart)."""
    kwargs: dict[str, Any] = {"min_size": 1, "max_size": max(size, 1), "kwargs": connect_kwargs(settings),
                              "name": name, "open": False, "reconnect_timeout": 300.0, "timeout": 5.0}
    pool = _CheckedPool(url, **kwargs) if check else ConnectionPool(url, **kwargs)
    pool.open(wait=False)
    return pool


def retry_while_unreachable(fn: Callable[[], T], *, within: float, what: str,
                            stop: Callable[[], bool] = lambda: False) -> T:
    """Call ``fn``, retrying with jittered exponential back-off while PostgreSQL is unreachable,
    for at most ``within`` seconds (or until ``stop()``); then the last error propagates."""
    delay = 0.05
    give_up = time.monotonic() + within
    while True:
        try:
            return fn()
        except psycopg.OperationalError as exc:
            if time.monotonic() > give_up or stop():
                raise
            log.warning("database unavailable; retrying", extra={"action": "db_retry", "during": what,
                                                                "error": str(exc)})
            time.sleep(delay + random.random() * delay)
            delay = min(delay * 2, 2.0)
