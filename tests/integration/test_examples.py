"""Every ported example, run to the end through a real ``durable worker`` process."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest

from durable import Client
from tests.support import ROOT, WorkerProcess, drop_schema, new_schema, wait_until

APPS = ["examples.order_processing", "examples.expense_approval", "examples.dashboard", "examples.bulk_emailer",
        "examples.trip_booking", "examples.daily_report", "examples.trial_reminder", "examples.payment_flow"]


@pytest.fixture(scope="module")
def ex(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Client]:
    schema = new_schema("ex")
    client = Client(database_url, schema=schema)
    log = tmp_path_factory.mktemp("ex") / "worker.log"
    with WorkerProcess(database_url, schema, APPS, queues=["default=8"], log_path=log):
        wait_until(lambda: _registered(client) >= 9, timeout=30, what="worker registered the examples")
        yield client
    client.close()
    drop_schema(database_url, schema)


def _registered(client: Client) -> int:
    with client._pool.connection() as conn:
        return int(conn.execute("SELECT count(*) FROM workflows").fetchone()[0])  # type: ignore[index]


def _waiting(client: Client, run_id: str) -> None:
    wait_until(lambda: client.get(run_id).status == "waiting", timeout=15, what=f"run {run_id} waiting")


def test_order_processing(ex: Client) -> None:
    run = ex.wait(ex.start("process_order", {"id": "order_123", "customer_id": "c1",
                                             "items": [{"price": 10}, {"price": 5}]}), timeout=30)
    assert run.status == "succeeded", run.error
    assert run.result["total"] == 15 and run.result["charge_id"].startswith("ch_") and run.result["confirmed"]


def test_order_processing_declined_card_retries_then_fails(ex: Client) -> None:
    run = ex.wait(ex.start("process_order", {"id": "o2", "items": [{"price": 1}], "card": "declined"}), timeout=30)
    assert run.status == "failed" and run.error["type"] == "PaymentDeclined"
    assert [s.attempt for s in run.steps if s.name == "charge_payment"] == [1, 2, 3]


@pytest.mark.parametrize(("decision", "status"), [("approved", "reimbursed"), ("rejected", "rejected")])
def test_expense_approval(ex: Client, decision: str, status: str) -> None:
    run_id = ex.start("expense_approval", {"employee_id": "e1", "amount": 120})
    _waiting(ex, run_id)
    wait = ex.get(run_id).waits[0]
    assert wait.kind == "approval" and wait.prompt == "Approve $120 expense?"
    ex.provide_input(run_id, "manager", decision)
    run = ex.wait(run_id, timeout=30)
    assert run.status == "succeeded" and run.result["status"] == status


def test_expense_approval_times_out_to_auto_rejected(ex: Client) -> None:
    run = ex.wait(ex.start("expense_approval", {"employee_id": "e2", "amount": 5, "timeout_ms": 300}), timeout=30)
    assert run.result["decision"] == "auto_rejected" and run.result["status"] == "rejected"


def test_dashboard_results_map(ex: Client) -> None:
    run = ex.wait(ex.start("build_dashboard", {"user_id": "u1"}), timeout=30)
    assert run.status == "succeeded", run.error
    assert run.result["dashboard"]["orders"][0]["id"] == "o1"
    broken = ex.wait(ex.start("build_dashboard", {"user_id": "broken"}), timeout=30)
    assert broken.status == "succeeded" and broken.result["dashboard"]["orders"] == []
    assert broken.result["__results__"]["orders"][0] == "error"


def test_dashboard_into(ex: Client) -> None:
    run = ex.wait(ex.start("build_dashboard_v2", {"user_id": "u1"}), timeout=30)
    assert run.status == "succeeded" and run.result["dashboard"]["notifs"] == ["welcome"]
    broken = ex.wait(ex.start("build_dashboard_v2", {"user_id": "broken"}), timeout=30)
    assert broken.status == "failed" and broken.error["message"] == "Failed to fetch dashboard data"


def test_bulk_emailer(ex: Client) -> None:
    recipients = [f"u{i}@example.com" for i in range(20)] + ["x@bounce.invalid"]
    run = ex.wait(ex.start("send_campaign", {"campaign_id": "c1", "recipients": recipients}), timeout=30)
    assert run.result["sent_count"] == 20 and run.result["failed_count"] == 1


def test_trip_booking_saga(ex: Client) -> None:
    ok = ex.wait(ex.start("book_trip", {"flight": "LHR-JFK", "hotel": "Plaza", "card": "4242"}), timeout=30)
    assert ok.status == "succeeded" and ok.result["charged"] is True
    bad = ex.wait(ex.start("book_trip", {"flight": "LHR-JFK", "hotel": "Plaza", "card": "declined"}), timeout=30)
    assert bad.status == "compensated"
    assert [s.name for s in bad.steps if s.kind == "compensation"] == ["cancel_hotel", "cancel_flight"]


def test_daily_report_schedule_and_manual_run(ex: Client) -> None:
    schedules = {s["name"]: s for s in ex.schedules()}
    nxt = schedules["daily_sales_report"]["next_fire_at"]
    local = nxt.astimezone(__import__("zoneinfo").ZoneInfo("America/New_York"))
    assert (local.hour, local.minute) == (9, 0) and nxt > datetime.now(UTC)
    run = ex.wait(ex.start("daily_sales_report", {}), timeout=30)
    assert run.status == "succeeded" and run.result["distributed"] is True


def test_trial_reminder(ex: Client) -> None:
    started = datetime.now(UTC)
    run_id = ex.start("trial_reminder", {"user_id": "u9", "trial_started_at": started.isoformat(),
                                         "check_in_after_ms": 300, "trial_length_ms": 900})
    run = ex.wait(run_id, timeout=30)
    assert run.status == "succeeded" and run.result["converted"] is False
    ended = datetime.fromisoformat(run.result["trial_ended_at"])
    assert ended >= started + timedelta(milliseconds=900)
    assert [w.kind for w in run.waits] == ["sleep", "sleep"]


@pytest.mark.parametrize(("event", "status"), [("payment.success", "fulfilled"), ("payment.failed", "cancelled")])
def test_payment_flow(ex: Client, event: str, status: str) -> None:
    run_id = ex.start("payment_flow", {"order_id": "o7", "amount": 10})
    _waiting(ex, run_id)
    ex.send_event(run_id, event, {"transaction_id": "txn_123"})
    run = ex.wait(run_id, timeout=30)
    assert run.status == "succeeded" and run.result["status"] == status and run.result["result"] == event


def test_payment_flow_expires(ex: Client) -> None:
    run = ex.wait(ex.start("payment_flow", {"order_id": "o8", "timeout_ms": 300}), timeout=30)
    assert run.result["result"] == "payment.expired" and run.result["status"] == "cancelled"


def test_examples_folder_is_covered() -> None:
    modules = {p.stem for p in (ROOT / "examples").glob("*.py")} - {"__init__", "services", "demo"}
    assert {a.split(".")[1] for a in APPS} == modules
