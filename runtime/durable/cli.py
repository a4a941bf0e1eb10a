"""The ``durable`` command line: run workers and a local dev stack, start and inspect runs.

Every command that prints data takes ``--output json`` for scripts.
"""

from __future__ import annotations

import importlib
import json
import signal
import sys
import threading
import time
from typing import Any

import click
from rich.console import Console
from rich.live import Live
from rich.table import Table

from . import logs
from .errors import DurableError
from .models import Run
from .settings import DatabaseSettings, Settings

console = Console(stderr=True)
_STATUS_STYLE = {"succeeded": "green", "failed": "red", "timed_out": "red", "cancelled": "yellow",
                 "waiting": "cyan", "running": "blue", "compensating": "magenta", "compensated": "magenta"}


def _settings(database_url: str | None, schema: str | None) -> Settings:
    base = Settings()
    db = DatabaseSettings(url=database_url or base.db.url, schema=schema or base.db.schema)
    return Settings(db=db, limits=base.limits, worker=base.worker)


def _client(ctx: click.Context) -> Any:
    from .client import Client

    s: Settings = ctx.obj["settings"]
    return Client(s.db.url, schema=s.db.schema, settings=s)


def _json_arg(text: str | None, what: str) -> Any:
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"{what} is not valid JSON: {exc}") from None


def _emit(ctx: click.Context, data: Any, render: Any) -> None:
    if ctx.obj["output"] == "json":
        click.echo(json.dumps(data, default=str, indent=2))
    else:
        render()


def _run_json(run: Run) -> dict[str, Any]:
    return run.model_dump(mode="json")


def _runs_table(runs: list[Run]) -> Table:
    table = Table(title="runs", expand=False)
    for col in ("ID", "WORKFLOW", "STATUS", "STEP", "PROGRESS", "AGE"):
        table.add_column(col)
    now = time.time()
    for r in runs:
        style = _STATUS_STYLE.get(r.status, "")
        age = int(now - r.created_at.timestamp())
        table.add_row(r.id[:8], r.workflow, f"[{style}]{r.status}[/]" if style else r.status,
                      r.current_step or "", r.progress or "", f"{age}s")
    return table


def _set_output(ctx: click.Context, _param: click.Parameter, value: str | None) -> None:
    if value:
        ctx.obj["output"] = value


def output_option(fn: Any) -> Any:
    """``--output``/``-o`` is accepted after the command too (``durable runs list -o json``)."""
    return click.option("--output", "-o", type=click.Choice(["text", "json"]), default=None, expose_value=False,
                        callback=_set_output, help="Output format.")(fn)


def _import_apps(apps: tuple[str, ...]) -> None:
    sys.path.insert(0, ".")
    for app in apps:
        try:
            importlib.import_module(app)
        except ImportError as exc:
            raise click.BadParameter(f"cannot import --app {app!r}: {exc}") from None


@click.group()
@click.option("--database-url", envvar="DURABLE_DATABASE_URL", help="PostgreSQL URL (default: embedded server).")
@click.option("--schema", envvar="DURABLE_SCHEMA", default=None, help="Schema name (default: durable).")
@click.option("--output", "-o", type=click.Choice(["text", "json"]), default="text", help="Output format.")
@click.option("--log-level", default="INFO", envvar="DURABLE_LOG_LEVEL")
@click.pass_context
def main(ctx: click.Context, database_url: str | None, schema: str | None, output: str, log_level: str) -> None:
    """Durable: durable, resumable Python workflows on PostgreSQL."""
    logs.setup(log_level)
    ctx.obj = {"settings": _settings(database_url, schema), "output": output}


@main.command()
@output_option
@click.pass_context
def migrate(ctx: click.Context) -> None:
    """Create or upgrade the schema."""
    from .db import connect, resolve_url
    from .migrate import migrate as run_migrations

    s: Settings = ctx.obj["settings"]
    with console.status("migrating…"), connect(resolve_url(s.db), s.db) as conn:
        applied = run_migrations(conn, s.db.schema)
    _emit(ctx, {"schema": s.db.schema, "applied": applied},
          lambda: click.echo(f"schema {s.db.schema}: " + (", ".join(applied) if applied else "up to date")))


def _worker(ctx: click.Context, apps: tuple[str, ...], queues: tuple[str, ...], metrics_port: int | None) -> Any:
    from dataclasses import replace

    from .worker import Worker, parse_queues

    _import_apps(apps)
    s: Settings = ctx.obj["settings"]
    if metrics_port is not None:
        s = replace(s, worker=replace(s.worker, metrics_port=metrics_port))
    try:
        parsed = parse_queues(list(queues))
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    return Worker(parsed, s)


@main.command()
@output_option
@click.option("--app", "apps", multiple=True, required=True, help="Module defining workflows (repeatable).")
@click.option("--queue", "queues", multiple=True, help="NAME=CONCURRENCY (repeatable; default default=10).")
@click.option("--metrics-port", type=int, default=None, help="Serve Prometheus metrics on this port.")
@click.pass_context
def worker(ctx: click.Context, apps: tuple[str, ...], queues: tuple[str, ...], metrics_port: int | None) -> None:
    """Run a worker for the workflows in --app modules."""
    w = _worker(ctx, apps, queues, metrics_port)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    w.start()
    stop.wait()
    w.stop()


@main.command()
@output_option
@click.option("--app", "apps", multiple=True, required=True, help="Module defining workflows (repeatable).")
@click.option("--queue", "queues", multiple=True, help="NAME=CONCURRENCY (repeatable).")
@click.option("--metrics-port", type=int, default=None)
@click.pass_context
def dev(ctx: click.Context, apps: tuple[str, ...], queues: tuple[str, ...], metrics_port: int | None) -> None:
    """Embedded PostgreSQL (unless DURABLE_DATABASE_URL is set) + a worker + a live table of runs."""
    with console.status("starting PostgreSQL and the worker…"):
        w = _worker(ctx, apps, queues, metrics_port)
        w.start()
        client = _client(ctx)
    console.print(f"worker ready: queues {w.queues}; workflows: {', '.join(x.name for x in w.workflows)}")
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with Live(_runs_table(client.list(limit=20)), console=console, refresh_per_second=4) as live:
        while not stop.wait(0.5):
            live.update(_runs_table(client.list(limit=20)))
    client.close()
    w.stop()


@main.command()
@output_option
@click.argument("workflow")
@click.option("--input", "input_", default=None, help="Input as JSON.")
@click.option("--queue", default=None)
@click.option("--priority", type=int, default=0)
@click.option("--idempotency-key", default=None)
@click.option("--wait", is_flag=True, help="Wait for the run to finish, showing its progress.")
@click.option("--timeout", type=float, default=None, help="With --wait: give up after this many seconds.")
@click.pass_context
def start(ctx: click.Context, workflow: str, input_: str | None, queue: str | None, priority: int,
          idempotency_key: str | None, wait: bool, timeout: float | None) -> None:
    """Start a run of WORKFLOW."""
    client = _client(ctx)
    run_id = client.start(workflow, _json_arg(input_, "--input"), queue=queue, priority=priority,
                          idempotency_key=idempotency_key)
    if not wait:
        _emit(ctx, {"id": run_id}, lambda: click.echo(run_id))
        return
    deadline = None if timeout is None else time.monotonic() + timeout
    with console.status(f"run {run_id[:8]} pending") as status:
        while True:
            run = client.get(run_id)
            status.update(f"run {run_id[:8]} {run.status} · step {run.current_step} · {run.progress or ''}")
            if run.finished:
                break
            if deadline is not None and time.monotonic() > deadline:
                raise click.ClickException(f"run {run_id} still {run.status} after {timeout}s")
            try:
                run = client.wait(run_id, timeout=0.5)
                break
            except DurableError:
                continue
    _emit(ctx, _run_json(run), lambda: _print_run(run))
    if run.status != "succeeded":
        sys.exit(1)


def _print_run(run: Run) -> None:
    console.print(f"[bold]{run.id}[/] {run.workflow} [{_STATUS_STYLE.get(run.status, '')}]{run.status}[/]"
                  f" step={run.current_step} progress={run.progress}")
    for s in run.steps:
        msg = f" error={s.error['message']}" if s.error else ""
        console.print(f"  {s.kind:<12} {s.name:<24} attempt {s.attempt} {s.status}{msg}")
    for w in run.waits:
        console.print(f"  wait {w.kind} {','.join(w.names)} {w.status}" + (f" until {w.until}" if w.until else ""))
    if run.result is not None:
        click.echo(json.dumps(run.result, indent=2))
    if run.error:
        console.print(f"[red]error[/]: {json.dumps(run.error)}")


@main.group()
def runs() -> None:
    """List, inspect and cancel runs."""


@runs.command("list")
@output_option
@click.option("--workflow", default=None)
@click.option("--status", default=None)
@click.option("--limit", type=int, default=50)
@click.pass_context
def runs_list(ctx: click.Context, workflow: str | None, status: str | None, limit: int) -> None:
    try:
        items = _client(ctx).list(workflow=workflow, status=status, limit=limit)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None
    _emit(ctx, [_run_json(r) for r in items], lambda: Console().print(_runs_table(items)))


@runs.command("get")
@output_option
@click.argument("run_id")
@click.pass_context
def runs_get(ctx: click.Context, run_id: str) -> None:
    run = _client(ctx).get(run_id)
    _emit(ctx, _run_json(run), lambda: _print_run(run))


@runs.command("cancel")
@output_option
@click.argument("run_id")
@click.option("--reason", default=None)
@click.pass_context
def runs_cancel(ctx: click.Context, run_id: str, reason: str | None) -> None:
    changed = _client(ctx).cancel(run_id, reason)
    _emit(ctx, {"id": run_id, "cancelled": changed},
          lambda: click.echo("cancelled" if changed else "already finished; nothing to cancel"))


@main.command("send-event")
@output_option
@click.argument("run_id")
@click.argument("name")
@click.option("--payload", default=None, help="Payload as JSON.")
@click.pass_context
def send_event(ctx: click.Context, run_id: str, name: str, payload: str | None) -> None:
    """Send event NAME to a run."""
    outcome = _client(ctx).send_event(run_id, name, _json_arg(payload, "--payload"))
    _emit(ctx, {"id": run_id, "event": name, "outcome": outcome}, lambda: click.echo(outcome))


@main.command("provide-input")
@output_option
@click.argument("run_id")
@click.argument("name")
@click.argument("data")
@click.pass_context
def provide_input(ctx: click.Context, run_id: str, name: str, data: str) -> None:
    """Provide input NAME (DATA as JSON, or a bare string) to a run."""
    try:
        value = json.loads(data)
    except json.JSONDecodeError:
        value = data
    outcome = _client(ctx).provide_input(run_id, name, value)
    _emit(ctx, {"id": run_id, "input": name, "outcome": outcome}, lambda: click.echo(outcome))


@main.group()
def schedules() -> None:
    """Cron schedules declared in code."""


@schedules.command("list")
@output_option
@click.pass_context
def schedules_list(ctx: click.Context) -> None:
    items = _client(ctx).schedules()

    def render() -> None:
        table = Table(title="schedules")
        for col in ("NAME", "WORKFLOW", "CRON", "TIMEZONE", "NEXT", "LAST"):
            table.add_column(col)
        for s in items:
            table.add_row(s["name"], s["workflow"], s["cron"], s["timezone"], str(s["next_fire_at"]),
                          str(s["last_fire_at"] or ""))
        Console().print(table)

    _emit(ctx, items, render)


def run() -> None:
    try:
        main(standalone_mode=True)
    except DurableError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)


if __name__ == "__main__":
    run()
