"""The workflow authoring API: ``Workflow``, its ``step``/``branch``/``parallel``/``compensation``.

Users build definitions at import time; every ``Workflow`` registers itself in ``REGISTRY`` so a
worker started with ``--app module`` finds it. Nothing here touches the database.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar, overload

from .errors import DefinitionError
from .retry import NO_RETRY, Retry
from .schedule import Cron
from .timeutil import Duration, to_ms

StepFn = Callable[..., Any]
F = TypeVar("F", bound=Callable[..., Any])


class _StepDecorator(Protocol):
    @overload
    def __call__(self, fn: F, /) -> F: ...

    @overload
    def __call__(self, fn: None = None, /, *, name: str | None = None, retry: Retry | None = None,
                 timeout: Duration | None = None, compensate: str | None = None,
                 queue: str | None = None) -> Callable[[F], F]: ...
_UNSET: Any = object()


@dataclass
class StepDef:
    name: str
    fn: StepFn
    retry: Retry = NO_RETRY
    timeout_ms: int | None = None
    compensate: str | None = None
    queue: str | None = None
    # Asked on every attempt; inspecting the function each time cost more than the trivial step.
    is_async: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_async = inspect.iscoroutinefunction(self.fn)


@dataclass
class Case:
    label: str
    steps: list[StepDef]
    value: Any = _UNSET
    when: Callable[[Any], bool] | None = None

    def matches(self, selected: Any, ctx: Any) -> bool:
        if self.when is not None:
            return bool(self.when(selected))
        return bool(selected == self.value)


@dataclass
class BranchDef:
    name: str
    on: Callable[[Any], Any]
    cases: list[Case] = field(default_factory=list)
    default: list[StepDef] | None = None


@dataclass
class ParallelDef:
    name: str
    steps: list[StepDef] = field(default_factory=list)
    into: Callable[[Any, dict[str, tuple[str, Any]]], Any] | None = None
    max_concurrency: int | None = None


Node = StepDef | BranchDef | ParallelDef


def _step_options(name: str | None, retry: Retry | None, timeout: Duration | None,
                  compensate: str | None, queue: str | None) -> dict[str, Any]:
    if retry is not None and not isinstance(retry, Retry):
        raise DefinitionError(f"retry= must be a durable.Retry, got {retry!r}")
    return {
        "name": name,
        "retry": retry or NO_RETRY,
        "timeout_ms": None if timeout is None else to_ms(timeout, what="step timeout"),
        "compensate": compensate,
        "queue": queue,
    }


class _StepCollector:
    """Something that steps can be declared into: a workflow, a branch case, a parallel block."""

    def __init__(self, workflow: Workflow, sink: list[StepDef]) -> None:
        self._wf = workflow
        self._sink = sink

    @overload
    def step(self, fn: F, /) -> F: ...

    @overload
    def step(self, fn: None = None, /, *, name: str | None = None, retry: Retry | None = None,
             timeout: Duration | None = None, compensate: str | None = None,
             queue: str | None = None) -> Callable[[F], F]: ...

    def step(self, fn: F | None = None, /, *, name: str | None = None, retry: Retry | None = None,
             timeout: Duration | None = None, compensate: str | None = None,
             queue: str | None = None) -> F | Callable[[F], F]:
        """``@x.step`` or ``@x.step(name=..., retry=..., timeout=..., compensate=..., queue=...)``."""
        opts = _step_options(name, retry, timeout, compensate, queue)

        def decorate(f: F) -> F:
            self._sink.append(self._wf._new_step(f, **opts))
            return f

        return decorate(fn) if fn is not None else decorate


class CaseBuilder(_StepCollector):
    """``@b.case(v)`` declares a one-step case; ``with b.case(v) as case:`` several steps."""

    def __init__(self, workflow: Workflow, case: Case, options: dict[str, Any]) -> None:
        super().__init__(workflow, case.steps)
        self._case = case
        self._options = options

    def __call__(self, fn: StepFn) -> StepFn:
        self._sink.append(self._wf._new_step(fn, **self._options))
        return fn

    def __enter__(self) -> CaseBuilder:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None and not self._case.steps:
            raise DefinitionError(f"branch case {self._case.label!r} declares no step")


class BranchBuilder:
    def __init__(self, workflow: Workflow, branch: BranchDef) -> None:
        self._wf = workflow
        self._branch = branch

    def case(self, value: Any = _UNSET, *, when: Callable[[Any], bool] | None = None,
             name: str | None = None, retry: Retry | None = None, timeout: Duration | None = None,
             compensate: str | None = None, queue: str | None = None) -> CaseBuilder:
        if (value is _UNSET) == (when is None):
            raise DefinitionError("branch case needs exactly one of a value or when=callable")
        label = getattr(when, "__name__", "when") if when is not None else repr(value)
        case = Case(label=label, steps=[], value=value, when=when)
        self._branch.cases.append(case)
        return CaseBuilder(self._wf, case, _step_options(name, retry, timeout, compensate, queue))

    def default(self, fn: StepFn | None = None, /) -> Any:
        if self._branch.default is not None:
            raise DefinitionError(f"branch {self._branch.name!r} already has a default")
        case = Case(label="default", steps=[])
        self._branch.default = case.steps
        builder = CaseBuilder(self._wf, case, _step_options(None, None, None, None, None))
        return builder(fn) if fn is not None else builder


class ParallelBuilder(_StepCollector):
    pass


class Workflow:
    """A named, ordered pipeline of steps. Creating one registers it (see ``REGISTRY``)."""

    def __init__(self, name: str, *, timeout: Duration | None = None, schedule: Cron | None = None,
                 queue: str = "default", max_context_bytes: int | None = None) -> None:
        if not isinstance(name, str) or not name.strip():
            raise DefinitionError(f"workflow name must be a non-empty string, got {name!r}")
        if schedule is not None and not isinstance(schedule, Cron):
            raise DefinitionError(f"schedule= must be a durable.Cron, got {schedule!r}")
        self.name = name
        self.timeout_ms = None if timeout is None else to_ms(timeout, what="workflow timeout")
        self.schedule = schedule
        self.queue = queue
        self.max_context_bytes = max_context_bytes
        self.nodes: list[Node] = []
        self.compensations: dict[str, StepDef] = {}
        self._names: set[str] = set()
        self._top = _StepCollector(self, self._top_sink())  # type: ignore[arg-type]
        self._graph: Any = None
        REGISTRY.register(self)

    def _top_sink(self) -> list[Node]:
        return self.nodes

    def _claim(self, name: str) -> str:
        if name in self._names:
            raise DefinitionError(f"workflow {self.name!r} already has a step named {name!r}")
        self._names.add(name)
        self._graph = None
        return name

    def _new_step(self, fn: StepFn, *, name: str | None, **opts: Any) -> StepDef:
        if not callable(fn):
            raise DefinitionError(f"a step must be a function, got {fn!r}")
        return StepDef(name=self._claim(name or fn.__name__), fn=fn, **opts)

    @property
    def step(self) -> _StepDecorator:
        """``@wf.step`` or ``@wf.step(name=..., retry=..., timeout=..., compensate=..., queue=...)``."""
        return self._top.step

    def compensation(self, fn: StepFn | None = None, /, *, name: str | None = None,
                     retry: Retry | None = None, timeout: Duration | None = None) -> Any:
        """Declare the undo action named by a step's ``compensate=``."""
        def decorate(f: StepFn) -> StepFn:
            cname = name or f.__name__
            if cname in self.compensations:
                raise DefinitionError(f"workflow {self.name!r} already has a compensation {cname!r}")
            opts = _step_options(cname, retry, timeout, None, None)
            self.compensations[cname] = StepDef(fn=f, **opts)
            self._graph = None
            return f

        return decorate(fn) if fn is not None else decorate

    @contextmanager
    def branch(self, *, on: Callable[[Any], Any], name: str | None = None) -> Iterator[BranchBuilder]:
        if not callable(on):
            raise DefinitionError("branch(on=...) must be a function of the context")
        node = BranchDef(name=self._claim(name or f"branch_{len(self.nodes) + 1}"), on=on)
        yield BranchBuilder(self, node)
        if not node.cases and node.default is None:
            raise DefinitionError(f"branch {node.name!r} declares no case")
        self.nodes.append(node)

    @contextmanager
    def parallel(self, *, into: Callable[..., Any] | None = None, max_concurrency: int | None = None,
                 name: str | None = None) -> Iterator[ParallelBuilder]:
        if max_concurrency is not None and (not isinstance(max_concurrency, int) or max_concurrency < 1):
            raise DefinitionError(f"max_concurrency must be a positive integer, got {max_concurrency!r}")
        node = ParallelDef(name=self._claim(name or f"parallel_{len(self.nodes) + 1}"), into=into,
                           max_concurrency=max_concurrency)
        yield ParallelBuilder(self, node.steps)
        if not node.steps:
            raise DefinitionError(f"parallel block {node.name!r} declares no step")
        self.nodes.append(node)

    @property
    def graph(self) -> Any:
        """The compiled navigation of this definition (validated on first use)."""
        if self._graph is None:
            from .graph import Graph

            self._graph = Graph(self)
        return self._graph

    def __repr__(self) -> str:
        return f"Workflow({self.name!r}, steps={[n.name for n in self.nodes]})"


class Registry:
    """Every ``Workflow`` created in this process, by name."""

    def __init__(self) -> None:
        self._workflows: dict[str, Workflow] = {}

    def register(self, wf: Workflow) -> None:
        # Re-importing a module (tests, reloads) replaces the definition rather than failing.
        self._workflows[wf.name] = wf

    def get(self, name: str) -> Workflow | None:
        return self._workflows.get(name)

    def remove(self, name: str) -> None:
        self._workflows.pop(name, None)

    def all(self) -> list[Workflow]:
        return list(self._workflows.values())


REGISTRY = Registry()
