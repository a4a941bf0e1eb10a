"""Closed-loop load, the same for both peers: a fixed number of client threads, each starting its
next workflow as soon as its previous one returned.

One thread per client and a shared counter, not one executor future per workflow: a future's
completion wakes the thread collecting results, one more thread hand-off per workflow that
measured the harness rather than the engine. Imports nothing of either engine.
"""

from __future__ import annotations

import itertools
import threading
from collections.abc import Callable


def closed_loop(call: Callable[[int], object], total: int, concurrency: int) -> None:
    """``call(0)`` ... ``call(total - 1)``, from ``concurrency`` threads each making its calls back to
    back; raises the first error any of them met, once all have stopped."""
    numbers = itertools.count()
    lock = threading.Lock()
    errors: list[BaseException] = []

    def client() -> None:
        while not errors:
            with lock:
                n = next(numbers)
            if n >= total:
                return
            try:
                call(n)
            except BaseException as exc:  # re-raised by the caller's thread below
                errors.append(exc)

    threads = [threading.Thread(target=client, name=f"load-{k}") for k in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
