"""Scheduled report: every day at 9:00 New York time."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from durable import Cron, Workflow, assign

from .services import EmailService, Reports

report = Workflow("daily_sales_report", schedule=Cron("0 9 * * *", timezone="America/New_York"))


@report.step
def generate(input: Any) -> Any:
    return {"report": Reports.sales_summary(datetime.now(UTC).date().isoformat())}


@report.step
def distribute(ctx: Any) -> Any:
    EmailService.send("team@example.com", f"Sales report {ctx.report['day']}")
    return assign(ctx, distributed=True)
