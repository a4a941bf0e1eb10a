"""Cron schedules: parsing, validation and the next tick in a time zone (DST-aware via croniter)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from croniter import croniter

from .errors import InvalidSchedule


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidSchedule(
            f"unknown time zone {name!r}; use an IANA name such as 'UTC' or 'America/New_York'") from None


def validate_cron(expr: str) -> str:
    if not isinstance(expr, str) or not croniter.is_valid(expr) or len(expr.split()) not in (5, 6):
        raise InvalidSchedule(
            f"malformed cron expression {expr!r}; expected 5 fields 'minute hour day month weekday', "
            "e.g. '0 9 * * *'")
    return expr


@dataclass(frozen=True)
class Cron:
    """``Cron("0 9 * * *", timezone="America/New_York")``: when a scheduled workflow starts."""

    expression: str
    timezone: str = "UTC"

    def __post_init__(self) -> None:
        validate_cron(self.expression)
        zone(self.timezone)

    def next_after(self, moment: datetime) -> datetime:
        """The first tick strictly after ``moment``, as an aware UTC datetime."""
        return next_tick(self.expression, self.timezone, moment)


def next_tick(expression: str, timezone: str, moment: datetime) -> datetime:
    """Ticks follow wall-clock time in ``timezone``. A tick in the hour skipped by a spring-forward
    fires at the first valid instant after it; a wall-clock time repeated by a fall-back fires once."""
    tz = zone(timezone)
    local = moment.astimezone(tz)
    it = croniter(expression, local)
    nxt: datetime = it.get_next(datetime)
    while nxt.replace(tzinfo=None) == local.replace(tzinfo=None):
        nxt = it.get_next(datetime)
    return nxt.astimezone(UTC)
