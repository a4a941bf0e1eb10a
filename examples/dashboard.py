"""Parallel data fetch, both forms: results in ``__results__``, or combined with ``into=``."""

from __future__ import annotations

from typing import Any

from durable import NonRetryableError, Workflow, assign

from .services import Directory

dashboard = Workflow("build_dashboard")


@dashboard.step
def init(input: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": input["user_id"]}


with dashboard.parallel() as p:

    @p.step
    def user(ctx: Any) -> Any:
        return {"user": Directory.user(ctx.user_id)}

    @p.step
    def orders(ctx: Any) -> Any:
        return {"orders": Directory.orders(ctx.user_id)}

    @p.step
    def notifications(ctx: Any) -> Any:
        return {"notifs": Directory.notifications(ctx.user_id)}


@dashboard.step
def render(ctx: Any) -> Any:
    results = ctx["__results__"]

    def data(name: str, key: str, default: Any) -> Any:
        status, value = results[name]
        return value[key] if status == "ok" else default

    return assign(ctx, dashboard={"user": data("user", "user", None), "orders": data("orders", "orders", []),
                                  "notifs": data("notifications", "notifs", [])})


dashboard_v2 = Workflow("build_dashboard_v2")


@dashboard_v2.step(name="init")
def init_v2(input: dict[str, Any]) -> dict[str, Any]:
    return {"user_id": input["user_id"]}


def combine(ctx: Any, results: dict[str, tuple[str, Any]]) -> Any:
    if all(status == "ok" for status, _ in results.values()):
        return assign(ctx, user=results["user"][1]["user"], orders=results["orders"][1]["orders"],
                      notifs=results["notifications"][1]["notifs"])
    raise NonRetryableError("Failed to fetch dashboard data")


with dashboard_v2.parallel(into=combine) as p2:

    @p2.step(name="user")
    def user_v2(ctx: Any) -> Any:
        return {"user": Directory.user(ctx.user_id)}

    @p2.step(name="orders")
    def orders_v2(ctx: Any) -> Any:
        return {"orders": Directory.orders(ctx.user_id)}

    @p2.step(name="notifications")
    def notifications_v2(ctx: Any) -> Any:
        return {"notifs": Directory.notifications(ctx.user_id)}


@dashboard_v2.step(name="render")
def render_v2(ctx: Any) -> Any:
    return assign(ctx, dashboard={"user": ctx.user, "orders": ctx.orders, "notifs": ctx.notifs})
