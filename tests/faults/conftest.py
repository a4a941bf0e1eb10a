"""Fault-test fixtures: a fresh schema per test, so killed workers and leftovers never leak across tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from durable import Client
from tests.support import drop_schema, new_schema


@pytest.fixture
def fault_schema(database_url: str) -> Iterator[str]:
    name = new_schema("f")
    yield name
    drop_schema(database_url, name)


@pytest.fixture
def fault_client(database_url: str, fault_schema: str) -> Iterator[Client]:
    client = Client(database_url, schema=fault_schema)
    yield client
    client.close()
