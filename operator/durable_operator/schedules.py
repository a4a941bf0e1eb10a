"""WorkflowSchedule: create a WorkflowRun at every cron tick.

Registered on import by :mod:`main`. A watch-event handler keeps the latest body of every schedule;
one :class:`Scheduler` loop (started by :mod:`main`, paused with the reflector on standby replicas)
evaluates them every second. Runs are named ``<schedule>-<unix tick time>`` and AlreadyExists counts
as success, so a restarted or duplicated operator never fires a tick twice. Only the latest tick
since the last one handled is considered; it is skipped if older than ``startingDeadlineSeconds``.
A tick skipped by ``concurrencyPolicy: Forbid`` is recorded as ``status.lastSkippedTime`` and counts
as handled.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
from croniter import croniter

from durable.errors import InvalidSchedule
from durable.schedule import next_tick, validate_cron, zone

from . import metrics
from .app import get_app
from .constants import (
    ANNOTATION_TICK,
    API_VERSION,
    GROUP,
    LABEL_COMPLETED,
    LABEL_SCHEDULE,
    RUN_KIND,
    SCHEDULE_KIND,
    SCHEDULES,
    TERMINAL_PHASES,
    VERSION,
)
from .kube import AlreadyExists, KubeApi, ref_of
from .status import ts

log = logging.getLogger("durable_operator.schedules")
SCHEDULE = (GROUP, VERSION, SCHEDULES)
_bodies: dict[tuple[str, str], dict[str, Any]] = {}


@kopf.on.event(*SCHEDULE, id="observe-schedule")
async def observe_schedule(event: kopf.RawEvent, name: str, namespace: str | None, **_: Any) -> None:
    assert namespace is not None
    if event.get("type") == "DELETED":
        _bodies.pop((namespace, name), None)
    else:
        _bodies[(namespace, name)] = dict(event["object"])


def _parse(stamp: Any) -> datetime | None:
    if not stamp:
        return None
    moment = datetime.fromisoformat(str(stamp).replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def latest_tick(expression: str, timezone: str, now: datetime) -> datetime:
    """The last tick at or before ``now`` (UTC)."""
    local = now.astimezone(zone(timezone))
    it = croniter(expression, local)
    prev: datetime = it.get_prev(datetime)
    nxt = next_tick(expression, timezone, prev)
    return nxt if nxt <= now else prev.astimezone(UTC)


def _active(run: dict[str, Any]) -> bool:
    labels = run.get("metadata", {}).get("labels") or {}
    return labels.get(LABEL_COMPLETED) != "true" and (run.get("status") or {}).get("phase") not in TERMINAL_PHASES


def _created(run: dict[str, Any]) -> str:
    return str(run.get("metadata", {}).get("creationTimestamp", ""))


class Scheduler:
    def __init__(self, kube: KubeApi, interval: float = 1.0, refresh: float = 5.0) -> None:
        self.kube = kube
        self.interval = interval
        self.refresh = refresh
        self._last_refresh: dict[tuple[str, str], float] = {}
        self._warned: set[tuple[str, str, str]] = set()

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            if not get_app().reflector.active:
                continue
            for key, body in list(_bodies.items()):
                try:
                    await asyncio.to_thread(self.evaluate, body, datetime.now(UTC))
                except Exception as exc:  # API server away: the next second tries again
                    log.warning("schedule %s/%s: %s", key[0], key[1], exc, extra={"action": "schedule"})

    def _event(self, body: dict[str, Any], type_: str, reason: str, message: str) -> None:
        meta = body["metadata"]
        try:
            self.kube.post_event(ref_of(meta["namespace"], meta["name"], meta.get("uid"), SCHEDULE_KIND,
                                        API_VERSION), type_, reason, message)
        except Exception as exc:
            log.info("could not post event: %s", exc)

    def evaluate(self, body: dict[str, Any], now: datetime) -> None:
        meta, spec, status = body["metadata"], body.get("spec") or {}, body.get("status") or {}
        ns, name = meta["namespace"], meta["name"]
        if meta.get("deletionTimestamp"):
            return
        tz = spec.get("timeZone") or "UTC"
        try:
            validate_cron(spec["schedule"])
            upcoming = next_tick(spec["schedule"], tz, now)
        except InvalidSchedule as exc:
            if status.get("message") != str(exc):
                self.kube.patch_schedule_status(ns, name, {"message": str(exc), "nextScheduleTime": None,
                                                           "conditions": [self._cond("False", "InvalidSchedule",
                                                                                     str(exc), now)]})
                self._event(body, "Warning", "InvalidSchedule", str(exc))
            return
        patch: dict[str, Any] = {}
        handled = max(filter(None, (_parse(status.get("lastScheduleTime")), _parse(status.get("lastSkippedTime")),
                                    _parse(meta.get("creationTimestamp")))))
        tick = latest_tick(spec["schedule"], tz, now)
        if not spec.get("suspend") and tick > handled:
            patch.update(self._fire(body, tick, now))
        loop_now = now.timestamp()
        key = (ns, name)
        if patch or loop_now - self._last_refresh.get(key, 0.0) >= self.refresh:
            self._last_refresh[key] = loop_now
            patch.update(self._history(body))
        patch["nextScheduleTime"] = None if spec.get("suspend") else ts(upcoming)
        if status.get("message"):
            patch["message"] = None
        patch["conditions"] = [self._cond("True", "Suspended" if spec.get("suspend") else "Scheduling",
                                          "suspended" if spec.get("suspend") else "scheduling runs", now, status)]
        patch["observedGeneration"] = meta.get("generation")
        if any(status.get(k) != v for k, v in patch.items() if k != "conditions") or \
                [dict(c, lastTransitionTime=None) for c in status.get("conditions") or []] != \
                [dict(c, lastTransitionTime=None) for c in patch["conditions"]]:
            self.kube.patch_schedule_status(ns, name, patch)
            body["status"] = {**status, **patch}  # until the watch event brings it back

    @staticmethod
    def _cond(state: str, reason: str, message: str, now: datetime,
              status: dict[str, Any] | None = None) -> dict[str, Any]:
        since = ts(now)
        for c in (status or {}).get("conditions") or []:
            if c.get("type") == "Ready" and c.get("status") == state and c.get("reason") == reason:
                since = c.get("lastTransitionTime") or since
        return {"type": "Ready", "status": state, "reason": reason, "message": message, "lastTransitionTime": since}

    def _runs(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        meta = body["metadata"]
        runs = self.kube.list_runs(meta["namespace"], f"{LABEL_SCHEDULE}={meta['name']}")
        owned = [r for r in runs if any(o.get("uid") == meta.get("uid")
                                        for o in r.get("metadata", {}).get("ownerReferences") or [])]
        return sorted(owned, key=_created)

    def _fire(self, body: dict[str, Any], tick: datetime, now: datetime) -> dict[str, Any]:
        meta, spec = body["metadata"], body.get("spec") or {}
        ns, name = meta["namespace"], meta["name"]
        run_name = f"{name}-{int(tick.timestamp())}"
        deadline = spec.get("startingDeadlineSeconds")
        if deadline is not None and (now - tick).total_seconds() > int(deadline):
            if (ns, name, run_name) not in self._warned:
                self._warned.add((ns, name, run_name))
                metrics.SCHEDULE_TICKS.labels("missed").inc()
                self._event(body, "Warning", "MissedSchedule",
                            f"tick {ts(tick)} missed by more than startingDeadlineSeconds={deadline}; skipped")
            return {"lastSkippedTime": ts(tick)}
        policy = spec.get("concurrencyPolicy") or "Allow"
        active = [r for r in self._runs(body) if _active(r) and r["metadata"]["name"] != run_name]
        if active and policy == "Forbid":
            metrics.SCHEDULE_TICKS.labels("forbidden").inc()
            self._event(body, "Normal", "SkippedForbid",
                        f"tick {ts(tick)} skipped: {active[0]['metadata']['name']} is still active")
            return {"lastSkippedTime": ts(tick)}
        if active and policy == "Replace":
            for r in active:
                self.kube.patch_run(ns, r["metadata"]["name"], {"spec": {
                    "cancel": True, "cancelReason": f"replaced by {run_name} (concurrencyPolicy: Replace)"}})
        template = spec.get("runTemplate") or {}
        run_spec: dict[str, Any] = {"workflow": spec["workflow"]}
        for field in ("input", "queue"):
            if spec.get(field) is not None:
                run_spec[field] = spec[field]
        run = {
            "apiVersion": API_VERSION, "kind": RUN_KIND,
            "metadata": {
                "name": run_name, "namespace": ns,
                "labels": {**(template.get("labels") or {}), LABEL_SCHEDULE: name},
                "annotations": {**(template.get("annotations") or {}), ANNOTATION_TICK: ts(tick)},
                "ownerReferences": [{"apiVersion": API_VERSION, "kind": SCHEDULE_KIND, "name": name,
                                     "uid": meta["uid"], "controller": True, "blockOwnerDeletion": False}],
            },
            "spec": run_spec,
        }
        try:
            self.kube.create_run(ns, run)
            metrics.SCHEDULE_TICKS.labels("created").inc()
            self._event(body, "Normal", "RunCreated", f"created WorkflowRun {run_name} for tick {ts(tick)}")
        except Exception as exc:
            if getattr(exc, "status", None) != AlreadyExists:
                raise
            metrics.SCHEDULE_TICKS.labels("already_exists").inc()
        return {"lastScheduleTime": ts(tick)}

    def _history(self, body: dict[str, Any]) -> dict[str, Any]:
        spec = body.get("spec") or {}
        runs = self._runs(body)
        active = [r for r in runs if _active(r)]
        succeeded = [r for r in runs if not _active(r) and (r.get("status") or {}).get("phase") == "Succeeded"]
        failed = [r for r in runs if not _active(r) and (r.get("status") or {}).get("phase") != "Succeeded"]
        ns = body["metadata"]["namespace"]
        for group, limit in ((succeeded, spec.get("successfulRunsHistoryLimit", 3)),
                             (failed, spec.get("failedRunsHistoryLimit", 1))):
            for r in group[: max(0, len(group) - int(limit))]:
                self.kube.delete_run(ns, r["metadata"]["name"])
        finished = [_parse((r.get("status") or {}).get("finishedAt")) for r in succeeded]
        last_ok = max(filter(None, finished), default=None)
        out: dict[str, Any] = {
            "active": [{"name": r["metadata"]["name"], "runId": (r.get("status") or {}).get("runId")}
                       for r in active],
            "activeCount": len(active),
        }
        if last_ok is not None:
            out["lastSuccessfulTime"] = ts(last_ok)
        return out
