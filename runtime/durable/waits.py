"""Durable waits callable from inside a step: sleep, timers, events, inputs, approvals, children.

A wait looks up the step's journal (loaded by the executor) by call index. A resolved entry
returns its recorded value; an unresolved one raises :class:`Suspend`, which the executor turns
into a checkpoint that parks the run. ``Suspend`` derives from ``BaseException`` so a user's
``except Exception`` cannot swallow it.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import ChildWorkflowFailed, DefinitionError, WaitTimeout
from .timeutil import Duration, to_ms

_NOT_GIVEN: Any = object()


@dataclass
class WaitRecord:
    """One journal entry, as stored in the ``waits`` table."""

    idx: int
    kind: str
    names: list[str]
    status: str  # open | resolved | timed_out | failed
    value: Any = None


@dataclass
class WaitRequest:
    """What a suspended step is waiting for; the executor stores it as a ``waits`` row."""

    idx: int
    kind: str  # sleep | event | any | all | input | approval | child
    names: list[str]
    until: datetime | None = None
    prompt: str | None = None
    has_timeout_value: bool = False
    timeout_value: Any = None
    child: dict[str, Any] | None = None


@dataclass
class StepRuntime:
    run_id: str
    step: str
    journal: dict[int, WaitRecord] = field(default_factory=dict)
    counter: int = 0


class Suspend(BaseException):
    def __init__(self, request: WaitRequest) -> None:
        super().__init__(request.kind, request.names)
        self.request = request


_current: contextvars.ContextVar[StepRuntime | None] = contextvars.ContextVar("durable_step", default=None)


def current_runtime() -> StepRuntime:
    rt = _current.get()
    if rt is None:
        raise DefinitionError("durable waits (sleep, wait_for_*, start_child) can only be called inside a step")
    return rt


def bind(rt: StepRuntime | None) -> contextvars.Token[StepRuntime | None]:
    return _current.set(rt)


def unbind(token: contextvars.Token[StepRuntime | None]) -> None:
    _current.reset(token)


def _until(timeout: Duration | None) -> datetime | None:
    if timeout is None:
        return None
    return datetime.now(UTC) + timedelta(milliseconds=to_ms(timeout, what="timeout"))


def _wait(kind: str, names: list[str], *, until: datetime | None = None, prompt: str | None = None,
          timeout_value: Any = _NOT_GIVEN, child: dict[str, Any] | None = None) -> tuple[bool, Any]:
    """Returns ``(timed_out, value)`` for a resolved wait; raises ``Suspend`` otherwise."""
    rt = current_runtime()
    idx = rt.counter
    rt.counter += 1
    rec = rt.journal.get(idx)
    if rec is not None and rec.status != "open":
        if rec.kind != kind or rec.names != names:
            raise DefinitionError(
                f"step {rt.step!r} changed its waits: call #{idx} was {rec.kind}{rec.names} when the run "
                f"suspended and is now {kind}{names}")
        if rec.status == "timed_out":
            if timeout_value is _NOT_GIVEN and kind != "sleep":
                raise WaitTimeout(f"{kind} wait for {', '.join(names)} in step {rt.step!r} timed out")
            return True, rec.value
        if rec.status == "failed":
            raise ChildWorkflowFailed(str(rec.value))
        return False, rec.value
    raise Suspend(WaitRequest(idx=idx, kind=kind, names=names, until=until, prompt=prompt,
                              has_timeout_value=timeout_value is not _NOT_GIVEN,
                              timeout_value=None if timeout_value is _NOT_GIVEN else timeout_value,
                              child=child))


def _names(names: list[str] | tuple[str, ...] | str, what: str) -> list[str]:
    if isinstance(names, str):
        names = [names]
    out = list(names)
    if not out or not all(isinstance(n, str) and n for n in out):
        raise ValueError(f"{what} needs one or more non-empty event names, got {names!r}")
    return out


def sleep(duration: Duration) -> None:
    """Suspend the run durably for ``duration`` (milliseconds or timedelta)."""
    _wait("sleep", ["sleep"], until=_until(duration))


def schedule_at(when: datetime) -> None:
    """Suspend the run until ``when`` (an aware datetime; naive means UTC)."""
    if not isinstance(when, datetime):
        raise TypeError(f"schedule_at needs a datetime, got {when!r}")
    _wait("sleep", ["schedule_at"], until=when if when.tzinfo else when.replace(tzinfo=UTC))


def wait_for_event(name: str, timeout: Duration | None = None, timeout_value: Any = _NOT_GIVEN) -> Any:
    return _wait("event", _names(name, "wait_for_event"), until=_until(timeout),
                 timeout_value=timeout_value)[1]


def wait_for_any(names: list[str], timeout: Duration | None = None, timeout_value: Any = _NOT_GIVEN) -> Any:
    timed_out, value = _wait("any", _names(names, "wait_for_any"), until=_until(timeout),
                             timeout_value=timeout_value)
    return value if timed_out else (value[0], value[1])


def wait_for_all(names: list[str], timeout: Duration | None = None, timeout_value: Any = _NOT_GIVEN) -> Any:
    return _wait("all", _names(names, "wait_for_all"), until=_until(timeout), timeout_value=timeout_value)[1]


def wait_for_input(name: str, prompt: str | None = None, timeout: Duration | None = None,
                   timeout_value: Any = _NOT_GIVEN) -> Any:
    return _wait("input", _names(name, "wait_for_input"), until=_until(timeout), prompt=prompt,
                 timeout_value=timeout_value)[1]


def wait_for_approval(name: str, prompt: str | None = None, timeout: Duration | None = None,
                      timeout_value: Any = _NOT_GIVEN) -> Any:
    return _wait("approval", _names(name, "wait_for_approval"), until=_until(timeout), prompt=prompt,
                 timeout_value=timeout_value)[1]


def start_child(workflow_name: str, input: Any = None, wait: bool = True) -> Any:
    """Start a run linked to this one. ``wait=True`` returns the child's result (suspending durably);
    ``wait=False`` returns the child's run id at once."""
    kind = "child" if wait else "child_start"
    return _wait(kind, [workflow_name], child={"workflow": workflow_name, "input": input})[1]
