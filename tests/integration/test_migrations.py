"""Migrations: applied once under an advisory lock, however many processes start together."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import psycopg

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
