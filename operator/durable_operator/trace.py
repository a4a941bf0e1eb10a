"""Opt-in per-resource timing for benchmarks: ``DURABLE_OPERATOR_TRACE=FILE`` appends one line per stage.

Each line is ``<namespace>/<name> <stage> <unix time> [extra]``. Stages:
``recv`` (Kopf's watch stream yielded an event; extra: its type), ``kopf-event`` (our filter saw it;
extra: its type, ``None`` when it came from a listing), ``seen`` (the start handler ran), ``started``
(the run exists), ``start-patched`` (Kopf's patch with ``runId`` came back on the watch), ``sync`` (a
reflector worker took the run), ``read`` (the run was read), ``sent`` / ``acked`` (a status patch; extra:
its phase). Off by default: without the variable every call is one attribute check.
"""

from __future__ import annotations

import os
import threading
import time
from typing import IO

_path = os.environ.get("DURABLE_OPERATOR_TRACE")
_file: IO[str] | None = open(_path, "a", buffering=1 << 16) if _path else None  # noqa: SIM115
enabled = _file is not None
_lock = threading.Lock()  # marks come from the loop and from the reflector's threads


def mark(key: str, stage: str, extra: str = "") -> None:
    if _file is not None:
        with _lock:
            _file.write(f"{key} {stage} {time.time():.6f} {extra}\n")


def flush() -> None:
    if _file is not None:
        with _lock:
            _file.flush()


def hook_watch() -> None:
    """Mark ``recv`` when Kopf's watch stream yields each event of a WorkflowRun (before Kopf queues it)."""
    if _file is None:
        return
    from kopf._cogs.clients import watching  # private: only ever imported with tracing on

    original = watching.watch_objs

    async def watch_objs(*args, **kwargs):  # type: ignore[no-untyped-def]
        async for ev in original(*args, **kwargs):
            obj = ev.get("object") or {}
            if obj.get("kind") == "WorkflowRun":
                meta = obj.get("metadata") or {}
                mark(f"{meta.get('namespace')}/{meta.get('name')}", "recv", str(ev.get("type")))
            yield ev

    watching.watch_objs = watch_objs
