"""Small fake services the examples call: deterministic, in-process, no network.

Each records what it was asked to do so tests and the demo can print it.
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

log = logging.getLogger("durable.examples")
_ids = itertools.count(1)
calls: list[tuple[str, Any]] = []


def _call(name: str, *args: Any) -> None:
    calls.append((name, args))
    log.info("service call", extra={"service": name, "call_args": repr(args)[:200]})


class PaymentDeclined(Exception):
    pass


class PaymentService:
    @staticmethod
    def charge(order_id: str, amount: float, card: str = "4242") -> dict[str, Any]:
        _call("payments.charge", order_id, amount)
        if card == "declined":
            raise PaymentDeclined(f"card declined for {order_id}")
        return {"id": f"ch_{next(_ids)}", "amount": amount}


class EmailService:
    @staticmethod
    def send(to: str, subject: str) -> bool:
        _call("email.send", to, subject)
        return not to.endswith("@bounce.invalid")


class Expenses:
    @staticmethod
    def reimburse(employee_id: str, amount: float) -> None:
        _call("expenses.reimburse", employee_id, amount)


class Directory:
    @staticmethod
    def user(user_id: str) -> dict[str, Any]:
        _call("users.get", user_id)
        return {"id": user_id, "name": f"User {user_id}"}

    @staticmethod
    def orders(user_id: str) -> list[dict[str, Any]]:
        _call("orders.recent", user_id)
        if user_id == "broken":
            raise RuntimeError("orders service unavailable")
        return [{"id": "o1", "total": 30}, {"id": "o2", "total": 12}]

    @staticmethod
    def notifications(user_id: str) -> list[str]:
        _call("notifications.unread", user_id)
        return ["welcome"]


class Travel:
    @staticmethod
    def book(kind: str, spec: Any) -> dict[str, Any]:
        _call(f"{kind}.book", spec)
        if spec == "sold-out":
            raise RuntimeError(f"{kind} sold out")
        return {"id": f"{kind}_{next(_ids)}", "price": 100 if kind == "flight" else 80}

    @staticmethod
    def cancel(kind: str, booking_id: str) -> None:
        _call(f"{kind}.cancel", booking_id)


class Reports:
    @staticmethod
    def sales_summary(day: str) -> dict[str, Any]:
        _call("reports.sales_summary", day)
        return {"day": day, "orders": 42, "revenue": 1234.5}
