"""Process settings, grouped by concern and read from ``DURABLE_*`` environment variables.

Documented in the README's settings table; every process kind (worker, client, operator) builds one.
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass, field

_SCHEMA_RE = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name} must be an integer, got {raw!r}") from None


@dataclass(frozen=True)
class DatabaseSettings:
    url: str | None = field(default_factory=lambda: os.environ.get("DURABLE_DATABASE_URL") or None)
    schema: str = field(default_factory=lambda: os.environ.get("DURABLE_SCHEMA", "durable"))
    pool_size: int = field(default_factory=lambda: _env_int("DURABLE_POOL_SIZE", 0))
    embedded_dir: str = field(default_factory=lambda: os.environ.get("DURABLE_EMBEDDED_DIR", ".durable/pgdata"))

    def __post_init__(self) -> None:
        if not _SCHEMA_RE.match(self.schema):
            raise ValueError(f"DURABLE_SCHEMA must be a lower-case SQL identifier, got {self.schema!r}")


@dataclass(frozen=True)
class LimitSettings:
    max_context_bytes: int = field(default_factory=lambda: _env_int("DURABLE_MAX_CONTEXT_BYTES", 1 << 20))


@dataclass(frozen=True)
class WorkerSettings:
    name: str = field(default_factory=lambda: os.environ.get("DURABLE_WORKER_NAME") or socket.gethostname())
    lease_seconds: int = field(default_factory=lambda: _env_int("DURABLE_LEASE_SECONDS", 30))
    poll_max_ms: int = field(default_factory=lambda: _env_int("DURABLE_POLL_MAX_MS", 2000))
    metrics_port: int = field(default_factory=lambda: _env_int("DURABLE_METRICS_PORT", 0))
    schedule_catchup_hours: int = field(default_factory=lambda: _env_int("DURABLE_SCHEDULE_CATCHUP_HOURS", 24))


@dataclass(frozen=True)
class Settings:
    db: DatabaseSettings = field(default_factory=DatabaseSettings)
    limits: LimitSettings = field(default_factory=LimitSettings)
    worker: WorkerSettings = field(default_factory=WorkerSettings)
