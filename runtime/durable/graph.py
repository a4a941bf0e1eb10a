"""Navigation over a workflow definition: which node comes after a step, and what entering a node means.

The executor asks this module where a run goes next; it is pure and never touches the database.
Steps are addressed by name, so a redeploy that keeps step names resumes in-flight runs.
"""

from __future__ import annotations

import hashlib
import inspect
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from .dsl import BranchDef, Node, ParallelDef, StepDef
from .errors import DefinitionError

if TYPE_CHECKING:
    from .dsl import Workflow


@dataclass(frozen=True)
class RunStep:
    step: StepDef


@dataclass(frozen=True)
class FanOut:
    parallel: ParallelDef


class NoBranchMatch(DefinitionError):
    pass


class Graph:
    def __init__(self, wf: Workflow) -> None:
        if not wf.nodes:
            raise DefinitionError(f"workflow {wf.name!r} has no steps")
        self.wf = wf
        self.nodes: dict[str, Node] = {}
        self.steps: dict[str, StepDef] = {}
        self.top_index: dict[str, int] = {}
        self._after: dict[str, str | None] = {}
        self.parallel_of: dict[str, ParallelDef] = {}
        top = wf.nodes
        for i, node in enumerate(top):
            nxt = top[i + 1].name if i + 1 < len(top) else None
            self.nodes[node.name] = node
            self.top_index[node.name] = i
            self._after[node.name] = nxt
            if isinstance(node, StepDef):
                self.steps[node.name] = node
            elif isinstance(node, BranchDef):
                cases = [c.steps for c in node.cases] + ([node.default] if node.default else [])
                for steps in cases:
                    for j, s in enumerate(steps):
                        self.steps[s.name] = s
                        self.top_index[s.name] = i
                        self._after[s.name] = steps[j + 1].name if j + 1 < len(steps) else nxt
            else:
                for s in node.steps:
                    self.steps[s.name] = s
                    self.top_index[s.name] = i
                    self.parallel_of[s.name] = node
        for s in self.steps.values():
            if s.compensate and s.compensate not in wf.compensations:
                raise DefinitionError(
                    f"step {s.name!r} of workflow {wf.name!r} names compensation {s.compensate!r}, "
                    f"which is not declared with @{'wf'}.compensation")
        self.first = top[0].name
        self.total = len(top)
        self.hash = _definition_hash(wf)

    def after(self, name: str) -> str | None:
        return self._after.get(name)

    def enter(self, name: str, ctx: Any) -> RunStep | FanOut:
        """Resolve a node name into the concrete thing to run (evaluating a branch selector)."""
        node = self.nodes.get(name) or self.steps.get(name)
        if node is None:
            raise DefinitionError(
                f"step {name!r} no longer exists in workflow {self.wf.name!r} "
                f"(definition {self.hash[:12]}); it was removed or renamed by a redeploy")
        if isinstance(node, StepDef):
            return RunStep(node)
        if isinstance(node, ParallelDef):
            return FanOut(node)
        selected = node.on(ctx)
        for case in node.cases:
            if case.matches(selected, ctx):
                return RunStep(case.steps[0])
        if node.default:
            return RunStep(node.default[0])
        labels = ", ".join(c.label for c in node.cases)
        raise NoBranchMatch(
            f"branch {node.name!r} of workflow {self.wf.name!r}: no case matches {selected!r} "
            f"(cases: {labels}) and there is no default")

    def describe(self) -> dict[str, Any]:
        """The JSON shape stored in ``workflows.graph`` for clients that lack the code."""
        def node_json(n: Node) -> dict[str, Any]:
            if isinstance(n, StepDef):
                return {"type": "step", "name": n.name}
            if isinstance(n, ParallelDef):
                return {"type": "parallel", "name": n.name, "steps": [s.name for s in n.steps]}
            cases = [{"case": c.label, "steps": [s.name for s in c.steps]} for c in n.cases]
            if n.default:
                cases.append({"case": "default", "steps": [s.name for s in n.default]})
            return {"type": "branch", "name": n.name, "cases": cases}

        return {"nodes": [node_json(n) for n in self.wf.nodes], "total": self.total,
                "index": self.top_index, "queue": self.wf.queue,
                "queues": sorted({s.queue for s in self.steps.values() if s.queue})}


def _source(fn: Any) -> str:
    try:
        return inspect.getsource(fn)
    except (OSError, TypeError):
        return getattr(fn, "__qualname__", repr(fn))


def _definition_hash(wf: Workflow) -> str:
    h = hashlib.sha256(wf.name.encode())
    for n in wf.nodes:
        h.update(f"|{type(n).__name__}:{n.name}".encode())
        if isinstance(n, StepDef):
            h.update(_source(n.fn).encode())
        elif isinstance(n, ParallelDef):
            for s in n.steps:
                h.update(f"/{s.name}".encode() + _source(s.fn).encode())
        else:
            for c in n.cases:
                for s in c.steps:
                    h.update(f"/{c.label}/{s.name}".encode() + _source(s.fn).encode())
            for s in n.default or []:
                h.update(f"/default/{s.name}".encode() + _source(s.fn).encode())
    for name, comp in sorted(wf.compensations.items()):
        h.update(f"|comp:{name}".encode() + _source(comp.fn).encode())
    return h.hexdigest()
