"""Names shared by the operator's modules: the API group, plurals, labels, finalizer, phases."""

from __future__ import annotations

GROUP = "durable.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"
RUNS = "workflowruns"
SCHEDULES = "workflowschedules"
RUN_KIND = "WorkflowRun"
SCHEDULE_KIND = "WorkflowSchedule"

FINALIZER = "durable.dev/cancel-run"
LABEL_COMPLETED = "durable.dev/completed"
LABEL_SCHEDULE = "durable.dev/schedule"
ANNOTATION_TICK = "durable.dev/scheduled-time"
COMPONENT = "durable-operator"

PEERING_NAME = "durable"

# Engine status word -> CRD phase (DESIGN §3: the same words, capitalised).
PHASES = {
    "pending": "Pending",
    "running": "Running",
    "waiting": "Waiting",
    "succeeded": "Succeeded",
    "failed": "Failed",
    "cancelled": "Cancelled",
    "compensating": "Compensating",
    "compensated": "Compensated",
    "timed_out": "TimedOut",
}
TERMINAL_PHASES = frozenset({"Succeeded", "Failed", "Cancelled", "Compensated", "TimedOut"})
