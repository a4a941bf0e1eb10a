"""Exactly-once forwarding of ``spec.inputs`` and ``spec.events`` to runs.

Called by :mod:`runs` whenever a WorkflowRun's spec changes (and on resume). The operator can die
between delivering and recording the delivery in ``status``, and a second replica can briefly act
during a peering hand-over, so every delivery names itself with a ``delivery_id`` and the engine's
idempotent delivery (``Client.provide_input`` / ``Client.send_event``) turns a repeated id for the
same run into a no-op that returns the first outcome. The ids are:

- ``event:<id>`` for ``spec.events[<id>]``: the id is the user's, so re-applying it is a replay;
- ``input:<name>:<sha256 of the value>`` for ``spec.inputs[<name>]``: a replay of the same value is
  not delivered twice, but changing the value is a new delivery.

The status lists (``deliveredInputs`` / ``deliveredEvents``) are the user-facing record; the
engine's ``deliveries`` table is the guard.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from durable import Client


def delivery_id(kind: str, key: str, payload: Any) -> str:
    """``event:<id>`` for events; ``input:<name>:<sha256 of the canonical JSON value>`` for inputs."""
    if kind == "event":
        return f"event:{key}"
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return f"input:{key}:{hashlib.sha256(canonical.encode()).hexdigest()}"


class Deliverer:
    """Delivers events and inputs through the engine's client, at most once per delivery id and run."""

    def __init__(self, client: Client) -> None:
        self._client = client

    def deliver(self, run_id: str, kind: str, key: str, name: str, payload: Any) -> str:
        """Deliver ``kind`` ("input" or "event") ``name``, identified by ``key`` (the input name or event id).

        Returns the engine's outcome (``"delivered"`` or ``"queued"``; for a replay, the first one).
        Raises ``durable.RunNotActive`` (nothing recorded) if the run has ended.
        """
        did = delivery_id(kind, key, payload)
        if kind == "input":
            return self._client.provide_input(run_id, name, payload, delivery_id=did)
        return self._client.send_event(run_id, name, payload, delivery_id=did)
