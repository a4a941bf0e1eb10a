"""Fixtures: one real PostgreSQL per session (embedded pgserver, or DURABLE_TEST_DATABASE_URL),
a fresh schema per test module, and an in-process worker serving it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from durable import Client
from durable.worker import Worker
from tests.support import drop_schema, new_schema, settings_for


def _embedded() -> str:
    import pgserver

    # Not under pytest's basetemp: concurrent pytest sessions prune each other's old basetemps.
    base = Path(tempfile.mkdtemp(prefix="durable-test-pg-"))
    return str(pgserver.get_server(base, cleanup_mode="delete").get_uri())


@pytest.fixture(scope="session")
def database_url() -> str:
    return os.environ.get("DURABLE_TEST_DATABASE_URL") or _embedded()


@pytest.fixture(scope="module")
def schema(database_url: str) -> Iterator[str]:
    name = new_schema()
    yield name
    drop_schema(database_url, name)


@pytest.fixture(scope="module")
def worker(database_url: str, schema: str) -> Iterator[Worker]:
    w = Worker({"default": 8, "priority": 2, "solo": 1}, settings_for(database_url, schema))
    w.start()
    yield w
    w.stop()


@pytest.fixture(scope="module")
def client(database_url: str, schema: str, worker: Worker) -> Iterator[Client]:
    c = Client(database_url, schema=schema)
    yield c
    c.close()
