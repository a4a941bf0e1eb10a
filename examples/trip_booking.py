"""Saga: book a flight and a hotel, charge; on failure cancel what was booked, in reverse order."""

from __future__ import annotations

from typing import Any

from durable import Retry, Workflow, assign

from .services import PaymentService, Travel

trip = Workflow("book_trip")


@trip.step(compensate="cancel_flight")
def book_flight(ctx: Any) -> Any:
    return assign(ctx, flight=Travel.book("flight", ctx["flight"]))


@trip.step(compensate="cancel_hotel")
def book_hotel(ctx: Any) -> Any:
    return assign(ctx, hotel=Travel.book("hotel", ctx["hotel"]))


@trip.step(retry=Retry(max_attempts=2, backoff="constant", base=50, jitter=False))
def charge(ctx: Any) -> Any:
    PaymentService.charge(ctx.get("trip_id", "trip"), ctx.flight["price"] + ctx.hotel["price"], ctx["card"])
    return assign(ctx, charged=True)


@trip.compensation
def cancel_flight(ctx: Any) -> Any:
    Travel.cancel("flight", ctx["flight"]["id"])
    return ctx


@trip.compensation(retry=Retry(max_attempts=3, base=50))
def cancel_hotel(ctx: Any) -> Any:
    Travel.cancel("hotel", ctx["hotel"]["id"])
    return ctx
