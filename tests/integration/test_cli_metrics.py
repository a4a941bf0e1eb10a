"""The ``durable`` CLI as a user types it, and the Prometheus endpoint of a worker process."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from tests.support import ROOT, WorkerProcess, drop_schema, new_schema, wait_until


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def cli_env(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    schema = new_schema("cli")
    port = _free_port()
    env = {**os.environ, "DURABLE_DATABASE_URL": database_url, "DURABLE_SCHEMA": schema, "PYTHONPATH": str(ROOT)}
    log = tmp_path_factory.mktemp("cli") / "worker.log"
    with WorkerProcess(database_url, schema, ["examples.expense_approval", "examples.order_processing",
                                              "examples.daily_report"],
                       env={"DURABLE_METRICS_PORT": str(port)}, log_path=log):
        yield {"env": env, "port": port}
    drop_schema(database_url, schema)


def durable(cli_env: dict[str, Any], *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "durable.cli", *args], env=cli_env["env"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"durable {' '.join(args)} exited {proc.returncode}: {proc.stderr}")
    return proc


def _waiting(cli_env: dict[str, Any], run_id: str) -> bool:
    out = durable(cli_env, "--output", "json", "runs", "get", run_id).stdout
    return bool(json.loads(out)["status"] == "waiting")


def test_cli_end_to_end(cli_env: dict[str, Any]) -> None:
    durable(cli_env, "migrate")
    out = durable(cli_env, "--output", "json", "migrate").stdout
    assert json.loads(out) == {"schema": cli_env["env"]["DURABLE_SCHEMA"], "applied": []}
    started = durable(cli_env, "--output", "json", "start", "process_order", "--input",
                      '{"id": "o1", "items": [{"price": 3}]}', "--wait").stdout
    run = json.loads(started)
    assert run["status"] == "succeeded" and run["result"]["total"] == 3

    expense = '{"employee_id": "e", "amount": 9}'
    run_id = durable(cli_env, "start", "expense_approval", "--input", expense).stdout.strip()
    wait_until(lambda: _waiting(cli_env, run_id), what="expense waiting")
    assert durable(cli_env, "provide-input", run_id, "manager", "approved").stdout.strip() == "delivered"
    wait_until(lambda: json.loads(durable(cli_env, "-o", "json", "runs", "get", run_id).stdout)["status"]
               == "succeeded", what="approved run finished")

    listed = json.loads(durable(cli_env, "runs", "list", "--workflow", "expense_approval", "-o", "json").stdout)
    assert [r["id"] for r in listed] == [run_id]
    text = durable(cli_env, "runs", "list").stdout
    assert "expense_approval" in text and "succeeded" in text

    run2 = durable(cli_env, "start", "expense_approval", "--input", '{"employee_id": "e", "amount": 1}').stdout.strip()
    assert json.loads(durable(cli_env, "-o", "json", "runs", "cancel", run2, "--reason", "dup").stdout)["cancelled"]
    bad = durable(cli_env, "send-event", run2, "x", check=False)
    assert bad.returncode == 2 and "already ended cancelled" in bad.stderr

    schedules = json.loads(durable(cli_env, "-o", "json", "schedules", "list").stdout)
    assert schedules[0]["workflow"] == "daily_sales_report" and schedules[0]["cron"] == "0 9 * * *"


def test_cli_bad_input_messages(cli_env: dict[str, Any]) -> None:
    bad_json = durable(cli_env, "start", "process_order", "--input", "{nope", check=False)
    assert bad_json.returncode == 2 and "--input is not valid JSON" in bad_json.stderr
    unknown = durable(cli_env, "start", "no_such_workflow", check=False)
    assert unknown.returncode == 2 and "unknown workflow 'no_such_workflow'" in unknown.stderr


def test_worker_metrics_endpoint(cli_env: dict[str, Any]) -> None:
    durable(cli_env, "start", "process_order", "--input", '{"id": "m", "items": [{"price": 1}]}', "--wait")

    def scrape() -> str:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{cli_env['port']}/metrics", timeout=2) as resp:
                return str(resp.read().decode())
        except OSError:
            return ""

    body = wait_until(lambda: (t := scrape()) and "durable_queue_depth" in t and t, what="metrics")
    assert 'durable_step_attempts_total{outcome="succeeded",step="validate",workflow="process_order"}' in body
    assert "durable_step_duration_seconds_bucket" in body
    assert 'durable_runs_finished_total{status="succeeded",workflow="process_order"}' in body
