"""Time helpers of the authoring API: durations are integers of milliseconds, as in the original."""

from __future__ import annotations

from datetime import timedelta

Duration = int | float | timedelta


def seconds(n: float) -> int:
    return int(n * 1000)


def minutes(n: float) -> int:
    return int(n * 60_000)


def hours(n: float) -> int:
    return int(n * 3_600_000)


def days(n: float) -> int:
    return int(n * 86_400_000)


def to_ms(value: Duration, *, what: str = "duration") -> int:
    """Normalise a duration given as milliseconds or a ``timedelta``; refuse negatives and junk."""
    if isinstance(value, bool) or not isinstance(value, int | float | timedelta):
        raise TypeError(f"{what} must be milliseconds (int) or a datetime.timedelta, got {value!r}")
    ms = value.total_seconds() * 1000 if isinstance(value, timedelta) else value
    if ms < 0:
        raise ValueError(f"{what} must not be negative, got {value!r}")
    return int(ms)
