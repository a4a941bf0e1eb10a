"""Migrations: applied once under an advisory lock, however many processes start together."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Any

import psycopg
import pytest

from durable import migrate as migrations
from durable.db import q
from durable.migrate import migrate, migration_files
from tests.support import drop_schema, new_schema


def test_concurrent_migrations_apply_each_file_once(database_url: str) -> None:
    schema = new_schema("mig")

    def run() -> list[str]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            return migrate(conn, schema)

    try:
        with ThreadPoolExecutor(6) as pool:
            results = list(pool.map(lambda _: run(), range(6)))
        applied = [names for names in results if names]
        assert len(applied) == 1, results  # exactly one process did the work
        assert applied[0] == [name for _, name, _ in migration_files()]
        with psycopg.connect(database_url) as conn:
            versions = [r[0] for r in conn.execute(f"SELECT version FROM {schema}.schema_migrations ORDER BY 1")]
        assert versions == [v for v, _, _ in migration_files()]
        assert run() == []  # up to date: nothing to do
    finally:
        drop_schema(database_url, schema)


def test_status_domains_keep_stored_rows_and_refuse_unknown_values(database_url: str,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    """0009 moves the status and kind rules from CHECK constraints to domains: rows stored
    before it survive unchanged, and the same values are still refused, by name."""
    schema = new_schema("dom")
    everything = migration_files()
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            monkeypatch.setattr(migrations, "migration_files", lambda: [f for f in everything if f[0] < 9])
            migrate(conn, schema)
            conn.execute(f"SET search_path = {schema}")
            conn.execute("INSERT INTO workflows (name, hash, first_step, graph) VALUES ('wf', 'h', 'one', '{}')")
            run_id = conn.execute("SELECT run_id FROM durable_start_v1(gen_random_uuid(), 'wf', 'h', 'default', 0,"
                                  " '{\"a\": 1}', 'one', NULL, NULL, NULL, NULL, NULL, NULL)").fetchone()[0]
            conn.execute("INSERT INTO steps (run_id, name, attempt, status, output, started_at) VALUES (%s, 'one', 1,"
                         " 'succeeded', '{\"a\": 2}', now())", (run_id,))
            before = conn.execute("SELECT e.status, t.kind, s.kind, s.status, e.input FROM executions e"
                                  " JOIN tasks t ON t.run_id = e.id JOIN steps s ON s.run_id = e.id").fetchall()
            monkeypatch.setattr(migrations, "migration_files", lambda: everything)
            assert migrate(conn, schema) == [name for v, name, _ in everything if v >= 9]
            after = conn.execute("SELECT e.status, t.kind, s.kind, s.status, e.input FROM executions e"
                                 " JOIN tasks t ON t.run_id = e.id JOIN steps s ON s.run_id = e.id").fetchall()
            assert after == before == [("pending", "step", "step", "succeeded", {"a": 1})]
            refused = [
                ("UPDATE executions SET status = 'sleeping'", "durable_run_status_check"),
                ("UPDATE tasks SET kind = 'nap'", "durable_task_kind_check"),
                ("UPDATE steps SET kind = 'nap'", "durable_step_kind_check"),
                ("UPDATE steps SET status = 'running'", "durable_step_status_check"),
            ]
            for statement, constraint in refused:
                with pytest.raises(psycopg.errors.CheckViolation, match=constraint):
                    conn.execute(statement)
            assert conn.execute("SELECT e.status, t.kind, s.kind, s.status, e.input FROM executions e"
                                " JOIN tasks t ON t.run_id = e.id JOIN steps s ON s.run_id = e.id").fetchall() == after
            conn.execute("UPDATE executions SET status = 'running'")  # an allowed value still goes in
    finally:
        drop_schema(database_url, schema)


@contextmanager
def _one_run(database_url: str, prefix: str) -> Iterator[tuple[psycopg.Connection[Any], uuid.UUID]]:
    """A migrated schema holding one pending run of a one-step workflow, on an autocommit connection."""
    schema = new_schema(prefix)
    try:
        with psycopg.connect(database_url, autocommit=True) as conn:
            migrate(conn, schema)
            conn.execute(f"SET search_path = {schema}")
            conn.execute("INSERT INTO workflows (name, hash, first_step, graph) VALUES ('wf', 'h', 'one', '{}')")
            run_id = conn.execute("SELECT run_id FROM durable_start_v1(gen_random_uuid(), 'wf', 'h', 'default', 0,"
                                  " '{}', 'one', NULL, NULL, NULL, NULL, NULL, NULL)").fetchone()[0]
            yield conn, run_id
    finally:
        drop_schema(database_url, schema)


def _hot_updates(conn: psycopg.Connection[Any], table: str) -> int:
    # This backend's own count, read back at once (pg_stat_user_tables lags behind).
    return int(conn.execute("SELECT pg_stat_get_xact_tuples_hot_updated(%s::regclass)", [table]).fetchone()[0])


def test_a_runs_status_changes_touch_no_index(database_url: str) -> None:
    """0011: no index covers executions.status, so leasing and finishing a run are HOT updates."""
    with _one_run(database_url, "hot") as (conn, run_id):
        before = _hot_updates(conn, "executions")
        leased = conn.execute("SELECT id, lease_token, started FROM durable_lease_v3('default', 1, 'o', 30)"
                              " WHERE id IS NOT NULL").fetchall()
        assert [r[2] for r in leased] == [True]
        assert _hot_updates(conn, "executions") == before + 1
        task_id, token, _ = leased[0]
        assert conn.execute("SELECT durable_succeed_v2(%s, %s, %s, 'one', 1, '{\"ok\": 1}', 'o', now())",
                            (task_id, token, run_id)).fetchone()[0]
        assert _hot_updates(conn, "executions") == before + 2
        assert conn.execute("SELECT status, result FROM executions").fetchall() == [("succeeded", {"ok": 1})]


def test_renewing_a_lease_touches_no_index(database_url: str) -> None:
    """0013: no index covers tasks.lease_expires_at, so a worker's lease renewals are HOT updates."""
    with _one_run(database_url, "renew") as (conn, _):
        [(token,)] = conn.execute("SELECT lease_token FROM durable_lease_v3('default', 1, 'o', 30)"
                                  " WHERE id IS NOT NULL").fetchall()
        before = _hot_updates(conn, "tasks")
        renewed = conn.execute(q("renew_leases"), {"tokens": [token], "ttl": 60})
        assert renewed.rowcount == 1
        assert _hot_updates(conn, "tasks") == before + 1
