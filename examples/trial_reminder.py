"""Delayed execution: sleep, then wake at a fixed time (``schedule_at``). Durations come from the input."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from durable import Workflow, assign, days, schedule_at, sleep

from .services import EmailService

trial = Workflow("trial_reminder")


@trial.step
def welcome(ctx: Any) -> Any:
    EmailService.send(f"{ctx['user_id']}@example.com", "Welcome!")
    started = ctx.get("trial_started_at") or datetime.now(UTC).isoformat()
    return {"user_id": ctx["user_id"], "trial_started_at": started,
            "check_in_after_ms": ctx.get("check_in_after_ms", days(3)),
            "trial_length_ms": ctx.get("trial_length_ms", days(14)), "subscribed": ctx.get("subscribed", False)}


@trial.step
def wait_3_days(ctx: Any) -> Any:
    sleep(ctx.check_in_after_ms)
    return ctx


@trial.step
def check_in(ctx: Any) -> Any:
    EmailService.send(f"{ctx.user_id}@example.com", "Tips for your trial")
    return ctx


@trial.step
def wait_until_trial_ends(ctx: Any) -> Any:
    trial_end = datetime.fromisoformat(ctx.trial_started_at) + timedelta(milliseconds=ctx.trial_length_ms)
    schedule_at(trial_end)
    return assign(ctx, trial_ended_at=datetime.now(UTC).isoformat())


@trial.step
def convert_or_remind(ctx: Any) -> Any:
    if ctx.subscribed:
        return assign(ctx, converted=True)
    EmailService.send(f"{ctx.user_id}@example.com", "Your trial ended: upgrade?")
    return assign(ctx, converted=False)
