"""Kopf handlers of WorkflowRun: start the run, forward inputs, events and cancellation, cancel on delete.

Registered on import by :mod:`main`. Status beyond ``runId``/deliveries/``observedGeneration`` is
written by the reflector (:mod:`notify`), never here, so the two writers touch disjoint fields.

- Starting is idempotent: the idempotency key is the resource's UID, so a handler re-run after a
  crash, or by a second replica, finds the same run.
- The Kopf finalizer is held only while the run is active (the delete handler's ``when`` filter),
  so deleting an active run cancels it first and a finished run never waits for the operator.
- Inputs and events go through :mod:`deliveries` (exactly once per input value / event id).
"""

from __future__ import annotations

import asyncio
import json
import logging
from datetime import UTC, datetime
from typing import Any

import kopf
import psycopg
from psycopg_pool import PoolTimeout

from durable import InvalidInput, RunNotActive, RunNotFound, UnknownQueue, WorkflowNotFound

from . import metrics, trace
from .app import get_app
from .constants import API_VERSION, FINALIZER, GROUP, LABEL_COMPLETED, RUN_KIND, RUNS, TERMINAL_PHASES, VERSION
from .kube import Transient, ref_of
from .status import failed_to_start

log = logging.getLogger("durable_operator.runs")
RUN = (GROUP, VERSION, RUNS)
_ttl_timers: dict[str, asyncio.TimerHandle] = {}
_trace_seen: set[str] = set()


def run_is_active(status: kopf.Status, meta: kopf.Meta, **_: Any) -> bool:
    # The reflector labels a finished run (and drops the finalizer) just before it writes the terminal
    # status, so the label alone also means "no finalizer needed": Kopf must not re-add it meanwhile.
    # The start handler adds the finalizer in its metadata patch, which Kopf sends just before the status
    # patch with runId: the finalizer alone must count too, or Kopf would drop it in between.
    started = bool(status.get("runId")) or FINALIZER in (meta.get("finalizers") or [])
    return (started and status.get("phase") not in TERMINAL_PHASES
            and meta.get("labels", {}).get(LABEL_COMPLETED) != "true")


class StartRefused(Exception):
    """The run cannot be created as specified (unknown workflow, bad input...): a permanent failure."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _transient(exc: Exception) -> kopf.TemporaryError:
    return kopf.TemporaryError(f"temporarily failed, retrying: {exc}", delay=5)


async def _input(spec: kopf.Spec, namespace: str) -> Any:
    source = spec.get("inputFrom")
    if not source:
        return spec.get("input")
    app = get_app()
    if "configMapKeyRef" in source:
        ref, what = source["configMapKeyRef"], "ConfigMap"
        read = app.kube.read_config_map_key
    else:
        ref, what = source["secretKeyRef"], "Secret"
        read = app.kube.read_secret_key
    try:
        raw = await asyncio.to_thread(read, namespace, ref["name"], ref["key"])
    except Transient as exc:
        raise _transient(exc) from exc
    except Exception as exc:
        # Most often a 404: the ConfigMap/Secret may be created right after the run; keep retrying.
        raise kopf.TemporaryError(f"cannot read inputFrom {what} {ref['name']!r}: {exc}", delay=10) from exc
    if raw is None:
        raise kopf.TemporaryError(f"{what} {ref['name']!r} has no key {ref['key']!r}", delay=10)
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise StartRefused("InvalidInput", f"{what} {ref['name']!r} key {ref['key']!r} is not JSON: {exc}") from None


async def _start(spec: kopf.Spec, namespace: str, uid: str) -> str:
    app = get_app()
    scheduled = spec.get("scheduledAt")
    scheduled_at = datetime.fromisoformat(scheduled.replace("Z", "+00:00")) if scheduled else None
    try:
        run_id = await asyncio.to_thread(
            app.client.start, spec["workflow"], await _input(spec, namespace), queue=spec.get("queue"),
            scheduled_at=scheduled_at, idempotency_key=uid, priority=int(spec.get("priority") or 0))
    except WorkflowNotFound as exc:
        raise StartRefused("WorkflowNotFound", str(exc)) from None
    except UnknownQueue as exc:
        raise StartRefused("UnknownQueue", str(exc)) from None
    except InvalidInput as exc:
        raise StartRefused("InvalidInput", str(exc)) from None
    except (psycopg.Error, PoolTimeout, OSError) as exc:
        raise _transient(exc) from exc
    metrics.RUNS_STARTED.labels(spec["workflow"]).inc()
    return str(run_id)


async def _post(namespace: str, name: str, uid: str, type_: str, reason: str, message: str) -> None:
    try:
        await asyncio.to_thread(get_app().kube.post_event, ref_of(namespace, name, uid, RUN_KIND, API_VERSION),
                                type_, reason, message)
    except Exception as exc:  # Events are best effort
        log.info("could not post event: %s", exc)


async def _forward(run_id: str, spec: kopf.Spec, status: kopf.Status, patch: kopf.Patch, namespace: str,
                   name: str, uid: str) -> None:
    """Deliver new inputs and events and forward cancellation; record deliveries in ``patch.status``."""
    app = get_app()
    ended = status.get("phase") in TERMINAL_PHASES
    pending: list[tuple[str, str, str, Any]] = []  # (kind, key, name, payload)
    inputs_done = list(status.get("deliveredInputs") or [])
    events_done = list(status.get("deliveredEvents") or [])
    for key, value in (spec.get("inputs") or {}).items():
        # Offered again on every spec change: the delivery id carries the value's hash, so the engine
        # ignores a replay but delivers a changed value.
        if not ended or key not in inputs_done:
            pending.append(("input", key, key, value))
    for key, ev in (spec.get("events") or {}).items():
        if key not in events_done:
            pending.append(("event", key, ev["name"], ev.get("payload")))
    changed = False
    for kind, key, what, payload in pending:
        if ended:
            metrics.DELIVERIES.labels(kind, "run_ended").inc()
            await _post(namespace, name, uid, "Warning", "NotDelivered",
                        f"{kind} {key!r} not delivered: the run has already ended {status.get('phase')}")
            continue
        try:
            outcome = await asyncio.to_thread(app.deliverer.deliver, run_id, kind, key, what, payload)
        except RunNotActive as exc:
            metrics.DELIVERIES.labels(kind, "run_ended").inc()
            await _post(namespace, name, uid, "Warning", "NotDelivered", str(exc))
            continue
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            if changed:  # keep what was delivered so far; the retry skips it
                patch.status["deliveredInputs"], patch.status["deliveredEvents"] = inputs_done, events_done
            raise _transient(exc) from exc
        done = inputs_done if kind == "input" else events_done
        if key in done:
            continue  # an input offered again: the engine dedups an unchanged value by its delivery id
        metrics.DELIVERIES.labels(kind, outcome).inc()
        done.append(key)
        changed = True
        log.info("%s %r %s to run %s", kind, key, outcome, run_id, extra={"action": "deliver", "run_id": run_id})
    if changed:
        patch.status["deliveredInputs"] = inputs_done
        patch.status["deliveredEvents"] = events_done
    if spec.get("cancel") and not ended:
        try:
            cancelled = await asyncio.to_thread(app.client.cancel, run_id,
                                                spec.get("cancelReason") or "cancelled via spec.cancel")
        except (psycopg.Error, PoolTimeout, OSError) as exc:
            raise _transient(exc) from exc
        metrics.DELIVERIES.labels("cancel", "cancelled" if cancelled else "already_ended").inc()
    if changed or spec.get("cancel"):
        app.reflector.mark(run_id)


@kopf.on.create(*RUN, id="start")
@kopf.on.resume(*RUN, id="resume")
@kopf.on.update(*RUN, field="spec", id="spec")
async def reconcile(spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str, namespace: str | None,
                    uid: str, patch: kopf.Patch, **_: Any) -> None:
    assert namespace is not None  # WorkflowRun is namespaced
    app = get_app()
    run_id = status.get("runId")
    if not run_id:
        if status.get("phase") in TERMINAL_PHASES:
            return  # refused at creation; nothing to forward to
        trace.mark(f"{namespace}/{name}", "seen")
        try:
            run_id = await _start(spec, namespace, uid)
        except StartRefused as exc:
            patch.status.update(failed_to_start(spec["workflow"], exc.reason, str(exc), datetime.now(UTC)))
            patch.status["observedGeneration"] = meta.get("generation")
            patch.metadata.labels[LABEL_COMPLETED] = "true"
            await _post(namespace, name, uid, "Warning", exc.reason, str(exc))
            return
        trace.mark(f"{namespace}/{name}", "started")
        # Hold the finalizer from now on, in the same request as Kopf's own annotation (Kopf would
        # otherwise add it with one more patch on the next event, once status.runId is there).
        finalizers = list(meta.get("finalizers") or [])
        if FINALIZER not in finalizers:
            finalizers.append(FINALIZER)
            patch.metadata["finalizers"] = finalizers
        # runId, workflow and observedGeneration go out with the reflector's first status patch, which
        # follows within a moment: a new run costs one status patch instead of Kopf's plus ours.
        app.reflector.track(run_id, namespace, name, uid, observed=status,
                            extra={"runId": run_id, "workflow": spec["workflow"],
                                   "observedGeneration": meta.get("generation")})
        app.reflector.observed(run_id, status.get("phase"), None, finalizers)
        await _forward(run_id, spec, status, patch, namespace, name, uid)
        if patch.get("status"):  # deliveries recorded: Kopf patches status anyway, so say everything there
            patch.status["runId"] = run_id
            patch.status["workflow"] = spec["workflow"]
            patch.status["observedGeneration"] = meta.get("generation")
        return
    if status.get("phase") not in TERMINAL_PHASES or meta.get("labels", {}).get(LABEL_COMPLETED) != "true":
        app.reflector.track(run_id, namespace, name, uid, observed=status)
        app.reflector.observed(run_id, status.get("phase"), None, meta.get("finalizers") or [])
    await _forward(run_id, spec, status, patch, namespace, name, uid)
    patch.status["observedGeneration"] = meta.get("generation")


@kopf.on.delete(*RUN, when=run_is_active, id="cancel-on-delete")
async def cancel_on_delete(status: kopf.Status, name: str, namespace: str | None, **_: Any) -> None:
    app = get_app()
    if not status.get("runId"):  # Kopf writes it right after the finalizer; wait for that patch
        raise kopf.TemporaryError("the run id is not recorded in status yet", delay=1)
    run_id = str(status["runId"])
    try:
        await asyncio.to_thread(app.client.cancel, run_id, f"WorkflowRun {namespace}/{name} was deleted")
    except RunNotFound:
        pass
    except (psycopg.Error, PoolTimeout, OSError) as exc:
        raise _transient(exc) from exc
    metrics.DELIVERIES.labels("cancel", "deleted").inc()
    app.reflector.forget(run_id)


def _observe_needed(event: kopf.RawEvent, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta,
                    namespace: str | None, name: str | None, **_: Any) -> bool:
    """Kopf's filter for :func:`observe`: most events (our own patches of a new or finished run) need nothing,
    and a plain filter costs far less than a handler invocation, on thousands of events per second."""
    if event.get("type") == "DELETED":
        return True
    if not status.get("runId"):
        if trace.enabled:
            trace.mark(f"{namespace}/{name}", "kopf-event", str(event.get("type")))
        return False
    if status.get("phase") in TERMINAL_PHASES and meta.get("labels", {}).get(LABEL_COMPLETED) == "true":
        # Finished and labelled: the reflector is done with it; only a TTL may still need a timer.
        return spec.get("ttlSecondsAfterFinished") is not None and f"{namespace}/{name}" not in _ttl_timers
    return True


@kopf.on.event(*RUN, id="observe", when=_observe_needed)
async def observe(event: kopf.RawEvent, spec: kopf.Spec, status: kopf.Status, meta: kopf.Meta, name: str,
                  namespace: str | None, uid: str, **_: Any) -> None:
    """Every watch event (incl. the listing after a restart or a peering pause): keep the reflector's map."""
    assert namespace is not None
    app = get_app()
    run_id = status.get("runId")
    key = f"{namespace}/{name}"
    if event.get("type") == "DELETED":
        if run_id:
            app.reflector.forget(run_id)
        timer = _ttl_timers.pop(key, None)
        if timer:
            timer.cancel()
        return
    if not run_id:
        return
    if trace.enabled and key not in _trace_seen:
        _trace_seen.add(key)
        trace.mark(key, "start-patched")
    phase = status.get("phase")
    labelled = meta.get("labels", {}).get(LABEL_COMPLETED) == "true"
    if phase not in TERMINAL_PHASES or not labelled:
        if not app.reflector.is_tracked(run_id):
            app.reflector.track(run_id, namespace, name, uid, observed=status, labelled=labelled,
                                resource_version=meta.get("resourceVersion"))
        app.reflector.observed(run_id, phase, meta.get("resourceVersion"), meta.get("finalizers"))
    ttl = spec.get("ttlSecondsAfterFinished")
    if ttl is not None and phase in TERMINAL_PHASES and status.get("finishedAt") and key not in _ttl_timers:
        finished = datetime.fromisoformat(str(status["finishedAt"]).replace("Z", "+00:00"))
        delay = max(0.0, finished.timestamp() + int(ttl) - datetime.now(UTC).timestamp())
        loop = asyncio.get_running_loop()
        _ttl_timers[key] = loop.call_later(delay, lambda: asyncio.ensure_future(_expire(namespace, name, key)))


async def _expire(namespace: str, name: str, key: str) -> None:
    _ttl_timers.pop(key, None)
    app = get_app()
    if not app.reflector.active:
        return
    try:
        await asyncio.to_thread(app.kube.delete_run, namespace, name)
        log.info("deleted %s after ttlSecondsAfterFinished", key, extra={"action": "ttl"})
    except Exception as exc:  # the next watch event (or restart) schedules it again
        log.warning("could not delete %s after its TTL: %s", key, exc)
