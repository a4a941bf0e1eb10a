"""Event-driven: wait for a payment webhook (success or failure) with an expiry, then branch."""

from __future__ import annotations

from typing import Any

from durable import Workflow, assign, days, wait_for_any

payments = Workflow("payment_flow")


@payments.step
def create_invoice(ctx: Any) -> Any:
    return {"order_id": ctx["order_id"], "invoice_id": f"inv_{ctx['order_id']}",
            "timeout_ms": ctx.get("timeout_ms", days(7))}


@payments.step
def await_payment(ctx: Any) -> Any:
    event, payload = wait_for_any(["payment.success", "payment.failed"], timeout=ctx.timeout_ms,
                                  timeout_value=("payment.expired", None))
    return assign(ctx, result=event, payment=payload)


with payments.branch(on=lambda ctx: ctx["result"]) as b:

    @b.case("payment.success")
    def fulfill(ctx: Any) -> Any:
        return assign(ctx, status="fulfilled")

    @b.default
    def cancel(ctx: Any) -> Any:
        return assign(ctx, status="cancelled")
