"""Bad input is refused with a clear error, and nothing stored changes."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import pytest

from durable import (
    Client,
    Cron,
    InvalidInput,
    InvalidSchedule,
    RunNotActive,
    UnknownQueue,
    Workflow,
    WorkflowNotFound,
    assign,
)
from durable.settings import LimitSettings, Settings

good = Workflow("t_bad_input")


@good.step
def echo(ctx: Any) -> Any:
    if ctx.get("return_bad"):
        return assign(ctx, when=datetime.now(UTC))
    if ctx.get("grow"):
        return assign(ctx, blob="x" * ctx["grow"])
    return ctx


def _counts(url: str, schema: str) -> tuple[int, int]:
    with psycopg.connect(url) as conn:
        conn.execute(f"SET search_path = {schema}")
        return (conn.execute("SELECT count(*) FROM executions").fetchone()[0],  # type: ignore[index]
                conn.execute("SELECT count(*) FROM tasks").fetchone()[0])  # type: ignore[index]


def test_refusals_store_nothing(client: Client, database_url: str, schema: str) -> None:
    before = _counts(database_url, schema)
    with pytest.raises(WorkflowNotFound, match=r"unknown workflow 'nope'.*registered workflows: .*t_bad_input"):
        client.start("nope", {})
    with pytest.raises(InvalidInput, match=r"input\['items'\]\[1\]\['at'\]: datetime is not JSON-serialisable"):
        client.start("t_bad_input", {"items": [1, {"at": datetime.now(UTC)}]})
    with pytest.raises(InvalidInput, match=r"input\['x'\]: nan is not a JSON number"):
        client.start("t_bad_input", {"x": float("nan")})
    with pytest.raises(InvalidInput, match=r"key 1 is a int"):
        client.start("t_bad_input", {1: "a"})
    with pytest.raises(InvalidInput, match=r"input\['notes'\]\[0\]: the NUL character \(\\u0000\) cannot be stored"):
        client.start("t_bad_input", {"notes": ["a\x00b"]})
    with pytest.raises(UnknownQueue, match=r"unknown queue 'ghost'; known queues: .*default"):
        client.start("t_bad_input", {}, queue="ghost")
    assert _counts(database_url, schema) == before


def test_oversized_input_refused(database_url: str, schema: str, worker: Any) -> None:
    small = Client(database_url, schema=schema, settings=Settings(limits=LimitSettings(max_context_bytes=100)))
    try:
        with pytest.raises(InvalidInput, match="over the limit of 100 bytes"):
            small.start("t_bad_input", {"blob": "y" * 200})
    finally:
        small.close()


def test_bad_step_output_fails_run_naming_key_path(client: Client) -> None:
    run = client.wait(client.start("t_bad_input", {"return_bad": True}), timeout=10)
    assert run.status == "failed"
    assert "output of step 'echo'['when']: datetime is not JSON-serialisable" in run.error["message"]
    assert run.context == {"return_bad": True}  # the stored context is untouched


def test_oversized_context_fails_run(client: Client) -> None:
    run = client.wait(client.start("t_bad_input", {"grow": 2 << 20}), timeout=10)
    assert run.status == "failed"
    assert "over the limit of 1048576 bytes" in run.error["message"]
    assert run.context == {"grow": 2 << 20}


def test_event_for_finished_or_unknown_run(client: Client) -> None:
    run = client.wait(client.start("t_bad_input", {}), timeout=10)
    with pytest.raises(RunNotActive, match="already ended succeeded"):
        client.send_event(run.id, "late", 1)
    with pytest.raises(RunNotActive):
        client.provide_input(run.id, "late", 1)
    with pytest.raises(Exception, match="not a run id"):
        client.send_event("not-a-uuid", "x", 1)


def test_malformed_cron_and_time_zone() -> None:
    with pytest.raises(InvalidSchedule, match="malformed cron expression '61 \\* \\* \\* \\*'"):
        Cron("61 * * * *")
    with pytest.raises(InvalidSchedule, match="unknown time zone 'Mars/Olympus'"):
        Cron("0 9 * * *", timezone="Mars/Olympus")
