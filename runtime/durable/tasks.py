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

    @classmethod
    def from_push(cls, item: list[Any]) -> tuple[int, Task, bool]:
        """A ``durable_push`` notification's array (migration 0012) as (slot, task, whether it carried
        the run's input): the first step of a new run, leased to us by its start."""
        slot, id_, token, run_id, workflow, step, queue, priority, deadline, input_, inline = item
        task = cls(id=id_, run_id=run_id, kind="step", step=step, queue=queue, priority=priority, attempt=1,
                   token=token, workflow=workflow, run_queue=queue, status="running", context=input_,
                   deadline=datetime.fromisoformat(deadline) if deadline else None, fresh=True)
        return slot, task, bool(inline)

    def advanced(self, step: str, queue: str, token: str, context: Any) -> Task:
        """This task moved on to the first attempt of ``step``, still leased to us with ``token``
        (the checkpoint's fast path). A new object, since the renewal thread may still read this
        one; built directly, as ``dataclasses.replace`` costs more than the step it follows."""
        return Task(id=self.id, run_id=self.run_id, kind="step", step=step, queue=queue, priority=self.priority,
                    attempt=1, token=token, workflow=self.workflow, run_queue=self.run_queue, status="running",
                    context=context, schedule_name=self.schedule_name, deadline=self.deadline, fresh=True,
                    started=self.started)
