"""The in-memory task the executor hands from one step to the next on the checkpoint's fast path."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

from durable.tasks import Task


def test_advanced_is_replace_of_exactly_the_fields_a_new_step_changes() -> None:
    task = Task(id=7, run_id="r", kind="join", step="fan", queue="q1", priority=3, attempt=4, token="old",
                workflow="wf", run_queue="main", status="waiting", context={"a": 1}, schedule_name="s",
                deadline=datetime(2030, 1, 1, tzinfo=UTC), fresh=False, started=True)

    # A field added to Task takes its default in both ``task`` above and ``advanced()``, so this test
    # would not see advanced() dropping it: a new field must be decided on here.
    assert {f.name for f in dataclasses.fields(Task)} == {
        "id", "run_id", "kind", "step", "queue", "priority", "attempt", "token", "workflow", "run_queue", "status",
        "context", "schedule_name", "deadline", "fresh", "started"}

    moved = task.advanced("next", "q2", "new", {"a": 2})

    assert moved == dataclasses.replace(task, kind="step", step="next", queue="q2", attempt=1, token="new",
                                        status="running", context={"a": 2}, fresh=True)
    assert moved is not task
    assert task.token == "old" and task.step == "fan"  # the renewal thread may still read the old one
