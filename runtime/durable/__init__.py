"""Durable: durable, resumable Python workflows on PostgreSQL, native to Kubernetes.

The public API is exactly ``__all__``; everything else is internal and may change.
"""

from .client import AsyncClient, Client
from .context import Context, append, assign, increment, update
from .dsl import Workflow
from .errors import (
    ChildWorkflowFailed,
    ContextTooLarge,
    DefinitionError,
    DurableError,
    InvalidInput,
    InvalidSchedule,
    NonRetryableError,
    RunNotActive,
    RunNotFound,
    RunTimeout,
    StepTimeout,
    UnknownQueue,
    WaitTimeout,
    WorkflowNotFound,
)
from .models import Run, RunStatus, StepInfo, WaitInfo
from .retry import Retry
from .schedule import Cron
from .timeutil import days, hours, minutes, seconds
from .waits import (
    schedule_at,
    sleep,
    start_child,
    wait_for_all,
    wait_for_any,
    wait_for_approval,
    wait_for_event,
    wait_for_input,
)

__all__ = [
    "AsyncClient",
    "ChildWorkflowFailed",
    "Client",
    "Context",
    "ContextTooLarge",
    "Cron",
    "DefinitionError",
    "DurableError",
    "InvalidInput",
    "InvalidSchedule",
    "NonRetryableError",
    "Retry",
    "Run",
    "RunNotActive",
    "RunNotFound",
    "RunStatus",
    "RunTimeout",
    "StepInfo",
    "StepTimeout",
    "UnknownQueue",
    "WaitInfo",
    "WaitTimeout",
    "Workflow",
    "WorkflowNotFound",
    "append",
    "assign",
    "days",
    "hours",
    "increment",
    "minutes",
    "schedule_at",
    "seconds",
    "sleep",
    "start_child",
    "update",
    "wait_for_all",
    "wait_for_any",
    "wait_for_approval",
    "wait_for_event",
    "wait_for_input",
]
