"""Batch processing: send a campaign to many recipients with bounded concurrency inside one step."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from typing import Any

from durable import Workflow, assign

from .services import EmailService

campaign = Workflow("send_campaign")


@campaign.step
def load(input: dict[str, Any]) -> dict[str, Any]:
    recipients = input.get("recipients") or [f"user{i}@example.com" for i in range(input.get("count", 25))]
    return {"campaign_id": input["campaign_id"], "recipients": recipients}


@campaign.step
def send_emails(ctx: Any) -> Any:
    with ThreadPoolExecutor(max_workers=10) as pool:
        results = list(pool.map(lambda r: EmailService.send(r, f"Campaign {ctx.campaign_id}"), ctx.recipients))
    return assign(ctx, sent_count=sum(results), failed_count=len(results) - sum(results))
