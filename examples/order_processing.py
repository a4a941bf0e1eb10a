"""Quick start: process an order (validate, total, charge with retries, confirm)."""

from __future__ import annotations

from typing import Any

from durable import Retry, Workflow, assign, hours, seconds

from .services import EmailService, PaymentService

orders = Workflow("process_order", timeout=hours(2))


@orders.step
def validate(input: dict[str, Any]) -> dict[str, Any]:
    if not input.get("items"):
        raise ValueError("an order needs at least one item")
    return {"order_id": input["id"], "items": input["items"], "customer_id": input.get("customer_id"),
            "card": input.get("card", "4242")}


@orders.step
def calculate_total(ctx: Any) -> Any:
    return assign(ctx, "total", sum(item["price"] for item in ctx["items"]))


@orders.step(retry=Retry(max_attempts=3, backoff="exponential", base=seconds(0.2)))
def charge_payment(ctx: Any) -> Any:
    charge = PaymentService.charge(ctx.order_id, ctx.total, ctx.card)
    return assign(ctx, charge_id=charge["id"])


@orders.step
def send_confirmation(ctx: Any) -> Any:
    EmailService.send(f"{ctx.customer_id}@example.com", f"Order {ctx.order_id} confirmed")
    return assign(ctx, confirmed=True)
