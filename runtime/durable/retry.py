"""Retry policies: how many attempts a step gets and how long to wait between them."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Literal

from .timeutil import Duration, minutes, seconds, to_ms

Backoff = Literal["exponential", "linear", "constant"]


@dataclass(frozen=True)
class Retry:
    """``delay(n)`` is the pause before attempt ``n + 1``, in milliseconds."""

    max_attempts: int = 3
    backoff: Backoff = "exponential"
    base: Duration = field(default_factory=lambda: seconds(1))
    max_delay: Duration = field(default_factory=lambda: minutes(5))
    jitter: bool = True
    retry_on: tuple[type[BaseException], ...] = (Exception,)

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be an integer >= 1, got {self.max_attempts!r}")
        if self.backoff not in ("exponential", "linear", "constant"):
            raise ValueError(
                f"Retry.backoff must be 'exponential', 'linear' or 'constant', got {self.backoff!r}")
        object.__setattr__(self, "base", to_ms(self.base, what="Retry.base"))
        object.__setattr__(self, "max_delay", to_ms(self.max_delay, what="Retry.max_delay"))
        if isinstance(self.retry_on, type):
            object.__setattr__(self, "retry_on", (self.retry_on,))

    def delay(self, attempt: int, rand: random.Random | None = None) -> int:
        base = to_ms(self.base)
        if self.backoff == "constant":
            ms = base
        elif self.backoff == "linear":
            ms = base * attempt
        else:
            ms = base * 2 ** (attempt - 1)
        ms = min(ms, to_ms(self.max_delay))
        if self.jitter:
            ms = int(ms * (rand or random).uniform(0.5, 1.0))
        return ms

    def should_retry(self, exc: BaseException, attempt: int) -> bool:
        from .errors import NonRetryableError

        if isinstance(exc, NonRetryableError) or attempt >= self.max_attempts:
            return False
        return isinstance(exc, self.retry_on)


NO_RETRY = Retry(max_attempts=1, jitter=False)
