"""Prometheus metrics of workers (and, through the same registry, the operator): names start ``durable_``."""

from __future__ import annotations

from functools import cache
from typing import Any

from prometheus_client import Counter, Gauge, Histogram, start_http_server

RUNS_STARTED = Counter("durable_runs_started_total", "Runs started", ["workflow"])
RUNS_FINISHED = Counter("durable_runs_finished_total", "Runs finished", ["workflow", "status"])
STEP_DURATION = Histogram("durable_step_duration_seconds", "Duration of step attempts", ["workflow", "step"],
                          buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5,
                                   10, 30, 60, 300))
STEP_ATTEMPTS = Counter("durable_step_attempts_total", "Step attempts", ["workflow", "step", "outcome"])
STEP_RETRIES = Counter("durable_step_retries_total", "Step attempts that will be retried", ["workflow", "step"])
QUEUE_DEPTH = Gauge("durable_queue_depth", "Tasks ready to run", ["queue"])
QUEUE_OLDEST = Gauge("durable_queue_oldest_task_age_seconds", "Age of the oldest ready, unleased task", ["queue"])
ACTIVE_WAITS = Gauge("durable_active_waits", "Open waits", ["kind"])
TASKS_IN_FLIGHT = Gauge("durable_worker_tasks_in_flight", "Tasks being executed by this worker", ["queue"])
PUSHED_RUNS = Counter("durable_worker_pushed_runs_total",
                      "New runs leased to this worker by their start (push dispatch): taken from the "
                      "notification, adopted after a lost one, or refused (left to their lease's expiry)",
                      ["queue", "outcome"])


@cache
def child(metric: Any, *labels: str) -> Any:
    """``metric.labels(*labels)``, looked up once: the hot path records a few per step. The label
    sets are the registry's own, so this keeps nothing the registry would not."""
    return metric.labels(*labels)


def serve(port: int) -> None:
    """Expose /metrics on ``port`` (0 disables)."""
    if port:
        start_http_server(port)
