"""Workflows run by the fault tests inside real ``durable worker`` subprocesses (``--app tests.faults.apps``).

Every step appends one line per body execution to the side log named by the run's input
(``{"log": path, "key": run key}``), so a test can count, across processes, how many times each
step body really ran: ``<unix time> <key> <step> <phase>``.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from durable import Workflow, assign, seconds, wait_for_all, wait_for_event


def side(ctx: Any, step: str, phase: str = "run") -> None:
    """Append one line to the side log: a single O_APPEND write, atomic across threads and processes."""
    line = f"{time.time():.6f} {ctx['key']} {step} {phase}\n".encode()
    fd = os.open(ctx["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


# -- 1. a worker killed mid-step ---------------------------------------------------------------------

crash = Workflow("faults_crash")


@crash.step
def one(ctx: Any) -> Any:
    side(ctx, "one")
    return None


@crash.step
def two(ctx: Any) -> Any:
    """Holds until the gate file exists (the test kills the worker meanwhile), then finishes."""
    side(ctx, "two", "start")
    deadline = time.monotonic() + 60
    while not Path(ctx["gate"]).exists():
        if time.monotonic() > deadline:
            raise RuntimeError("gate never opened")
        time.sleep(0.05)
    side(ctx, "two", "end")
    return assign(ctx, two_done=True)


@crash.step
def three(ctx: Any) -> Any:
    side(ctx, "three")
    return assign(ctx, three_done=True)


# -- 2. PostgreSQL restarted under running steps -----------------------------------------------------

slow3 = Workflow("faults_slow3")


def _slow(ctx: Any, step: str) -> Any:
    side(ctx, step, "start")
    time.sleep(ctx.get("ms", 100) / 1000)
    side(ctx, step, "end")
    return assign(ctx, {step: True})


@slow3.step(name="s1")
def slow_1(ctx: Any) -> Any:
    return _slow(ctx, "s1")


@slow3.step(name="s2")
def slow_2(ctx: Any) -> Any:
    return _slow(ctx, "s2")


@slow3.step(name="s3")
def slow_3(ctx: Any) -> Any:
    return _slow(ctx, "s3")


# -- 3. two workers racing for the same tasks --------------------------------------------------------

race = Workflow("faults_race")


@race.step(name="r1")
def race_1(ctx: Any) -> Any:
    side(ctx, "r1")
    return None


@race.step(name="r2")
def race_2(ctx: Any) -> Any:
    side(ctx, "r2")
    return None


@race.step(name="r3")
def race_3(ctx: Any) -> Any:
    side(ctx, "r3")
    return assign(ctx, done=True)


# -- 4. a lost notification ---------------------------------------------------------------------------

quick = Workflow("faults_quick")


@quick.step
def only(ctx: Any) -> Any:
    side(ctx, "only")
    return assign(ctx, ran_at=time.time())


# -- 5. duplicate delivery of events -----------------------------------------------------------------

dup = Workflow("faults_dup")


@dup.step
def first_ping(ctx: Any) -> Any:
    side(ctx, "first_ping")
    return assign(ctx, first=wait_for_event("ping"))


@dup.step
def pause(ctx: Any) -> Any:
    # Long enough that a duplicate sent right after the first delivery finds no open wait at all.
    time.sleep(ctx.get("pause_ms", 1000) / 1000)
    return None


@dup.step
def second_ping(ctx: Any) -> Any:
    side(ctx, "second_ping")
    return assign(ctx, second=wait_for_event("ping", timeout=seconds(ctx.get("second_timeout_s", 10)),
                                             timeout_value="none"))


@dup.step
def both(ctx: Any) -> Any:
    side(ctx, "both")
    return assign(ctx, both=wait_for_all(["x", "y"], timeout=seconds(ctx.get("all_timeout_s", 10)),
                                         timeout_value="none"))


@dup.step
def leftover(ctx: Any) -> Any:
    """An ``x`` kept in the mailbox by the duplicate delivery to ``both`` is consumed here."""
    side(ctx, "leftover")
    return assign(ctx, leftover=wait_for_event("x", timeout=seconds(ctx.get("leftover_timeout_s", 10)),
                                               timeout_value="none"))


# -- a step that outlives its lease (it must be renewed, not stolen) --------------------------------

long_step = Workflow("faults_long")


@long_step.step
def hold(ctx: Any) -> Any:
    side(ctx, "hold", "start")
    time.sleep(ctx["hold_s"])
    side(ctx, "hold", "end")
    return assign(ctx, held=True)
