"""Workflows the benchmark runs on real worker processes (``durable worker --app bench.apps``).

- ``bench_three_steps``: three trivial steps, each adding one to ``n`` (the same shape as the
  DBOS peer's workflow in ``bench/dbos_peer.py``), for throughput and start-to-result latency.
- ``bench_event``: one step that waits for the event ``go`` and then records when it woke.
- ``bench_timer``: one step that sleeps durably for ``TIMER_MS`` and then records when it fired.

Times are ``time.time()`` on the worker; the benchmark runs on the same machine, so it compares
them with its own clock.
"""

from __future__ import annotations

import time
from typing import Any

from durable import Workflow, assign, sleep, wait_for_event

TIMER_MS = 200

three_steps = Workflow("bench_three_steps")


@three_steps.step
def bench_step_one(input: Any) -> Any:
    return {"n": int(input["n"]) + 1}


@three_steps.step
def bench_step_two(ctx: Any) -> Any:
    return assign(ctx, n=ctx["n"] + 1)


@three_steps.step
def bench_step_three(ctx: Any) -> Any:
    return assign(ctx, n=ctx["n"] + 1)


event_wf = Workflow("bench_event")


@event_wf.step
def bench_wait_go(input: Any) -> Any:
    # Code before a wait runs again on resume; here there is none, so woke_at is the resume time.
    payload = wait_for_event("go")
    return {"woke_at": time.time(), "payload": payload}


timer_wf = Workflow("bench_timer")


@timer_wf.step
def bench_nap(input: Any) -> Any:
    sleep(int((input or {}).get("ms", TIMER_MS)))
    return {"fired_at": time.time()}
