"""What the client returns: pydantic models of a run, its steps and its waits."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict


class RunStatus(StrEnum):
    """Compares equal to the plain status words (``Run.status == "succeeded"``)."""

    pending = "pending"
    running = "running"
    waiting = "waiting"
    succeeded = "succeeded"
    failed = "failed"
    cancelled = "cancelled"
    compensating = "compensating"
    compensated = "compensated"
    timed_out = "timed_out"

    @property
    def finished(self) -> bool:
        return self in FINISHED


FINISHED = frozenset({RunStatus.succeeded, RunStatus.failed, RunStatus.cancelled, RunStatus.compensated,
                      RunStatus.timed_out})


class StepInfo(BaseModel):
    name: str
    kind: str
    attempt: int
    status: str
    output: Any = None
    error: dict[str, Any] | None = None
    worker: str | None = None
    started_at: datetime
    finished_at: datetime


class WaitInfo(BaseModel):
    step: str
    idx: int
    kind: str
    names: list[str]
    prompt: str | None = None
    until: datetime | None = None
    status: str
    value: Any = None
    created_at: datetime
    resolved_at: datetime | None = None


class Run(BaseModel):
    model_config = ConfigDict(frozen=True)

    id: str
    workflow: str
    status: RunStatus
    definition_hash: str
    queue: str
    priority: int
    input: Any = None
    context: Any = None
    current_step: str | None = None
    attempt: int = 0
    result: Any = None
    error: dict[str, Any] | None = None
    idempotency_key: str | None = None
    parent_id: str | None = None
    progress: str | None = None
    scheduled_at: datetime | None = None
    deadline: datetime | None = None
    created_at: datetime
    started_at: datetime | None = None
    updated_at: datetime
    finished_at: datetime | None = None
    steps: list[StepInfo] = []
    waits: list[WaitInfo] = []

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @classmethod
    def from_record(cls, record: Sequence[Any]) -> Run:
        """From the JSON array of ``durable_run_v1`` (migration 0006): the run's row, then its steps
        and its waits."""
        *row, steps, waits = record
        return cls.from_row(row, steps, waits)

    @classmethod
    def from_row(cls, row: Sequence[Any], steps: Sequence[Sequence[Any]] = (),
                 waits: Sequence[Sequence[Any]] = ()) -> Run:
        """``steps`` and ``waits`` rows may come as JSON arrays (timestamps as ISO strings), which
        pydantic parses like the database's own values."""
        (id_, workflow, hash_, status, queue, priority, input_, context, current_step, attempt, result, error,
         key, parent_id, scheduled_at, deadline, created_at, started_at, updated_at, finished_at,
         index, total) = row
        if status == "succeeded" and total:
            progress: str | None = f"{total}/{total}"
        else:
            progress = f"{index}/{total}" if total and index is not None else None
        return cls(
            id=str(id_), workflow=workflow, status=RunStatus(status), definition_hash=hash_, queue=queue,
            priority=priority, input=input_, context=context, current_step=current_step, attempt=attempt,
            result=result, error=error, idempotency_key=key, parent_id=str(parent_id) if parent_id else None,
            progress=progress, scheduled_at=scheduled_at, deadline=deadline, created_at=created_at,
            started_at=started_at, updated_at=updated_at, finished_at=finished_at,
            steps=[StepInfo(name=s[0], kind=s[1], attempt=s[2], status=s[3], output=s[4], error=s[5], worker=s[6],
                            started_at=s[7], finished_at=s[8]) for s in steps],
            waits=[WaitInfo(step=w[0], idx=w[1], kind=w[2], names=list(w[3]), prompt=w[4], until=w[5],
                            status=w[6], value=w[7], created_at=w[8], resolved_at=w[9]) for w in waits],
        )
