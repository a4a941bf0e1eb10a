"""Render a run (``durable.Run``) as a WorkflowRun ``status``: bounded, deterministic, JSON-ready.

Called by :mod:`notify` for every status patch. The same run always renders to the same dict (times
come from the database, never from the clock), so an unchanged run is recognised and not re-patched.
Bulky data stays in PostgreSQL: the result is truncated past ``MAX_RESULT_BYTES``, step lists and
messages are capped, because etcd refuses objects over ~1.5 MiB and every watcher pays for big ones.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from durable import Run, StepInfo

from .constants import PHASES, TERMINAL_PHASES

MAX_STEPS = 50
MAX_RESULT_BYTES = 16 * 1024
MAX_MESSAGE = 512


def ts(moment: datetime | None) -> str | None:
    """RFC 3339 in UTC with millisecond precision, as the API server stores ``date-time`` fields."""
    if moment is None:
        return None
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def short(text: Any, limit: int = MAX_MESSAGE) -> str | None:
    if text is None:
        return None
    s = str(text)
    return s if len(s) <= limit else s[: limit - 1] + "…"


def phase_of(run: Run) -> str:
    return PHASES[str(run.status)]


def _steps(steps: list[StepInfo]) -> tuple[list[dict[str, Any]], int]:
    # One entry per step name (its latest attempt), ordered by the first attempt's start.
    latest: dict[str, StepInfo] = {}
    first: dict[str, datetime] = {}
    for s in steps:
        first.setdefault(s.name, s.started_at)
        if s.name not in latest or s.attempt >= latest[s.name].attempt:
            latest[s.name] = s
    out = [{
        "name": s.name,
        "phase": s.status.capitalize(),
        "attempts": s.attempt,
        "startedAt": ts(first[s.name]),
        "finishedAt": ts(s.finished_at),
        "message": short((s.error or {}).get("message"), 256),
    } for s in sorted(latest.values(), key=lambda s: first[s.name])]
    dropped = max(0, len(out) - MAX_STEPS)
    return out[dropped:], dropped


def _waiting(run: Run) -> dict[str, Any] | None:
    if run.finished:
        return None
    for w in run.waits:
        if w.status == "open":
            return {"kind": w.kind, "name": ",".join(w.names) or w.kind, "prompt": short(w.prompt),
                    "until": ts(w.until)}
    return None


def _result(run: Run) -> dict[str, Any]:
    if run.result is None:
        return {"result": None, "resultTruncated": None, "resultBytes": None}
    size = len(json.dumps(run.result, separators=(",", ":")).encode())
    if size > MAX_RESULT_BYTES:
        return {"result": None, "resultTruncated": True, "resultBytes": size}
    return {"result": run.result, "resultTruncated": None, "resultBytes": size}


def _message(run: Run, waiting: dict[str, Any] | None) -> str | None:
    if run.error:
        where = f" in step {run.error['step']}" if run.error.get("step") else ""
        return short(f"{run.error.get('type') or 'Error'}{where}: {run.error.get('message') or ''}")
    if waiting is not None:
        what = f"waiting for {waiting['kind']} {waiting['name']!r}"
        return short(f"{what}: {waiting['prompt']}" if waiting["prompt"] else what)
    return None


def conditions(run: Run) -> list[dict[str, Any]]:
    phase = phase_of(run)
    accepted = {"type": "Accepted", "status": "True", "reason": "RunStarted",
                "message": f"run {run.id}", "lastTransitionTime": ts(run.created_at)}
    if phase == "Succeeded":
        done = {"status": "True", "reason": "Succeeded", "message": "the run succeeded"}
    elif phase in TERMINAL_PHASES:
        msg = (run.error or {}).get("message") or f"the run ended {phase}"
        done = {"status": "False", "reason": phase, "message": short(msg) or ""}
    else:
        done = {"status": "Unknown", "reason": phase, "message": f"the run is {phase.lower()}"}
    finished_at = run.finished_at if phase in TERMINAL_PHASES else run.created_at
    return [accepted, {"type": "Succeeded", **done, "lastTransitionTime": ts(finished_at)}]


RENDERED_KEYS = ("phase", "runId", "workflow", "currentStep", "progress", "attempt", "waitingFor", "steps",
                 "stepsTruncated", "result", "resultTruncated", "resultBytes", "error", "message", "startedAt",
                 "finishedAt", "conditions")


def render(run: Run) -> dict[str, Any]:
    """The run-derived part of ``status``. Absent values are explicit ``None`` so a merge patch clears them."""
    steps, dropped = _steps(run.steps)
    waiting = _waiting(run)
    return {
        "phase": phase_of(run),
        "runId": run.id,
        "workflow": run.workflow,
        "currentStep": None if run.finished else run.current_step,
        "progress": run.progress,
        "attempt": run.attempt,
        "waitingFor": waiting,
        "steps": steps,
        "stepsTruncated": dropped or None,
        **_result(run),
        "error": {"step": run.error.get("step"), "type": run.error.get("type"),
                  "message": short(run.error.get("message"))} if run.error else None,
        "message": _message(run, waiting),
        "startedAt": ts(run.started_at or run.created_at),
        "finishedAt": ts(run.finished_at),
        "conditions": conditions(run),
    }


def failed_to_start(workflow: str, reason: str, message: str, now: datetime) -> dict[str, Any]:
    """Status of a WorkflowRun whose run could not be created (unknown workflow, bad input, ...)."""
    stamp = ts(now)
    return {
        "phase": "Failed",
        "workflow": workflow,
        "message": short(message),
        "error": {"step": None, "type": reason, "message": short(message)},
        "finishedAt": stamp,
        "conditions": [
            {"type": "Accepted", "status": "False", "reason": reason, "message": short(message) or "",
             "lastTransitionTime": stamp},
            {"type": "Succeeded", "status": "False", "reason": reason, "message": short(message) or "",
             "lastTransitionTime": stamp},
        ],
    }
