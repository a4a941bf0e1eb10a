"""Cron schedules declared in code: ticks fire on time, never twice, none skipped across a restart."""

from __future__ import annotations

import time
from typing import Any

import psycopg

from durable import Cron, Workflow
from durable.dsl import REGISTRY
from durable.worker import Worker
from tests.support import drop_schema, new_schema, settings_for, wait_until


def _ticks(url: str, schema: str) -> list[int]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(f"SELECT idempotency_key FROM {schema}.executions ORDER BY 1").fetchall()
    return sorted(int(r[0].rsplit(":", 1)[1]) for r in rows)


def test_schedule_ticks_survive_worker_restart(database_url: str) -> None:
    schema = new_schema("sched")
    wf = Workflow("t_every_second", schedule=Cron("* * * * * *"))  # sixth field: seconds

    @wf.step
    def tick(ctx: Any) -> Any:
        return ctx

    try:
        settings = settings_for(database_url, schema)
        first = Worker({"default": 4}, settings, workflows=[wf])
        first.start()
        wait_until(lambda: len(_ticks(database_url, schema)) >= 2, timeout=10, what="two ticks")
        first.stop()
        time.sleep(2.2)  # ticks come due while no worker runs
        second = Worker({"default": 4}, settings, workflows=[wf])
        second.start()
        wait_until(lambda: len(_ticks(database_url, schema)) >= 6, timeout=15, what="six ticks")
        second.stop()
        ticks = _ticks(database_url, schema)
        assert len(ticks) == len(set(ticks)), "a tick fired twice"
        assert ticks == list(range(ticks[0], ticks[0] + len(ticks))), f"a tick was skipped: {ticks}"
    finally:
        REGISTRY.remove("t_every_second")
        drop_schema(database_url, schema)
