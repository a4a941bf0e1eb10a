"""Approval workflow: wait for a manager's decision (with a timeout fallback), then branch on it."""

from __future__ import annotations

from typing import Any

from durable import Workflow, assign, days, wait_for_approval

from .services import EmailService, Expenses

expenses = Workflow("expense_approval")


@expenses.step
def request_approval(ctx: Any) -> Any:
    decision = wait_for_approval(
        "manager",
        prompt=f"Approve ${ctx['amount']} expense?",
        timeout=ctx.get("timeout_ms", days(3)),
        timeout_value="auto_rejected",
    )
    return assign(ctx, decision=decision)


with expenses.branch(on=lambda ctx: ctx["decision"]) as b:

    @b.case("approved")
    def process(ctx: Any) -> Any:
        Expenses.reimburse(ctx["employee_id"], ctx["amount"])
        return assign(ctx, status="reimbursed")

    @b.default
    def notify_rejection(ctx: Any) -> Any:
        EmailService.send(f"{ctx['employee_id']}@example.com", "Expense rejected")
        return assign(ctx, status="rejected")
