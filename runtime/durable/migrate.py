"""Schema migrations: numbered SQL files shipped in the package, applied in order under an advisory lock.

Called by ``durable migrate`` and on start by workers, the client and the operator, so any number of
processes can start at once and exactly one applies each migration.
"""

from __future__ import annotations

import logging
import re
import zlib
from importlib import resources
from typing import Any

import psycopg
from psycopg import sql

log = logging.getLogger("durable.migrate")
_FILE_RE = re.compile(r"^(\d{4})_[\w-]+\.sql$")


def migration_files() -> list[tuple[int, str, str]]:
    folder = resources.files("durable").joinpath("sql/migrations")
    found = []
    for entry in folder.iterdir():
        m = _FILE_RE.match(entry.name)
        if m:
            found.append((int(m.group(1)), entry.name, entry.read_text()))
    return sorted(found)


def _lock_key(schema: str) -> int:
    return zlib.crc32(f"durable-migrate:{schema}".encode()) & 0x7FFFFFFF


def migrate(conn: psycopg.Connection[Any], schema: str) -> list[str]:
    """Apply pending migrations to ``schema``; returns the names applied (empty when up to date)."""
    applied: list[str] = []
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (_lock_key(schema),))
        conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        conn.execute(sql.SQL("SET LOCAL search_path = {}, public").format(sql.Identifier(schema)))
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations ("
                     "version integer PRIMARY KEY, name text NOT NULL, applied_at timestamptz NOT NULL DEFAULT now())")
        done = {r[0] for r in conn.execute("SELECT version FROM schema_migrations").fetchall()}
        for version, name, text in migration_files():
            if version in done:
                continue
            conn.execute(text.encode())
            conn.execute("INSERT INTO schema_migrations (version, name) VALUES (%s, %s)", (version, name))
            applied.append(name)
            log.info("applied migration", extra={"action": "migrate", "migration": name, "schema": schema})
    return applied
