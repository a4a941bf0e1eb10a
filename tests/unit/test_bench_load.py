"""The benchmark's closed-loop load: every workflow number once, never more than `concurrency` at a time."""

from __future__ import annotations

import threading
import time

import pytest

from bench.load import closed_loop


def test_each_call_once_and_at_most_concurrency_at_a_time() -> None:
    seen: list[int] = []
    running = 0
    peak = 0
    lock = threading.Lock()

    def call(n: int) -> None:
        nonlocal running, peak
        with lock:
            running += 1
            peak = max(peak, running)
            seen.append(n)
        time.sleep(0.001)
        with lock:
            running -= 1

    closed_loop(call, 200, 8)
    assert sorted(seen) == list(range(200))
    assert 1 < peak <= 8


def test_an_error_stops_the_load_and_is_raised() -> None:
    calls: list[int] = []

    def call(n: int) -> None:
        calls.append(n)
        if n == 5:
            raise RuntimeError("run 5 failed")

    with pytest.raises(RuntimeError, match="run 5 failed"):
        closed_loop(call, 10_000, 4)
    assert len(calls) < 10_000
