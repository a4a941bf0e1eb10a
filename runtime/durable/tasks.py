"""The in-memory shape of a leased task, shared by the worker, the executor and the checkpoints."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass
class Task:
    id: int
    run_id: str | None
    kind: str  # step | join | compensate | deadline | cron
    step: str
    queue: str
    priority: int
    attempt: int
    token: str
    workflow: str | None = None
    run_queue: str = "default"
    status: str | None = None
    context: Any = None
    schedule_name: str | None = None
    deadline: datetime | None = None
    # True when no wait journal exists for this step yet (a step just entered), so none is loaded.
    fresh: bool = False
    # True when this lease set the run running (from pending or waiting): the worker announces it.
    started: bool = False

    @classmethod
    def from_lease_row(cls, row: tuple[Any, ...]) -> Task:
        (id_, run_id, kind, step, schedule_name, queue, priority, attempt, token,
         workflow, run_queue, status, context, deadline, has_journal, started) = row[:16]
        return cls(id=id_, run_id=str(run_id) if run_id else None, kind=kind, step=step, queue=queue,
                   priority=priority, attempt=attempt, token=str(token), workflow=workflow,
                   run_queue=run_queue or queue, status="running" if started else status, context=context,
                   schedule_name=schedule_name, deadline=deadline, fresh=not has_journal, started=bool(started))
