"""Prometheus metrics of the operator (DESIGN §7), served on ``--metrics-port`` by :mod:`main`."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

STATUS_PATCH_SECONDS = Histogram(
    "durable_operator_status_patch_seconds", "Latency of one WorkflowRun status patch",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5))
STATUS_PATCHES = Counter("durable_operator_status_patches_total",
                         "WorkflowRun status patches, by who wrote them", ["source"])
STATUS_PATCH_ERRORS = Counter("durable_operator_status_patch_errors_total",
                              "Failed WorkflowRun status patches (retried)")
NOTIFICATIONS = Counter("durable_operator_notifications_total", "durable_runs notifications received")
RUNS_STARTED = Counter("durable_operator_runs_started_total", "Runs started for WorkflowRuns", ["workflow"])
DELIVERIES = Counter("durable_operator_deliveries_total",
                     "Inputs, events and cancellations forwarded to runs", ["kind", "outcome"])
SCHEDULE_TICKS = Counter("durable_operator_schedule_ticks_total", "Schedule ticks, by outcome", ["outcome"])
TRACKED_RUNS = Gauge("durable_operator_tracked_runs", "Active WorkflowRuns whose status the operator reflects")
ACTIVE = Gauge("durable_operator_active", "1 when this replica is the active one (Kopf peering), else 0")
