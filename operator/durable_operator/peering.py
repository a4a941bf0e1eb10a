"""Which replica acts: Kopf peering, mirrored for the parts of the operator that Kopf does not pause.

Kopf pauses its watchers, handlers and daemons in every replica but the highest-priority one. The
status reflector (:mod:`notify`) is our own task, so :func:`watch_leadership` reads the same peering
object every few seconds and applies Kopf's rule (pause if another live peer has a priority >= ours)
to it. :func:`ensure_peering_object` creates the peering object at start-up: Kopf only updates it,
and without it every replica would act.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from typing import Any

from kubernetes.client.exceptions import ApiException

from .kube import KubeApi
from .notify import Reflector

log = logging.getLogger("durable_operator.peering")


def ensure_peering_object(kube: KubeApi, name: str, namespaces: list[str]) -> None:
    targets: list[str | None] = list(namespaces) if namespaces else [None]
    for ns in targets:
        body: dict[str, Any] = {"apiVersion": "kopf.dev/v1", "metadata": {"name": name}}
        try:
            if ns is None:
                body["kind"] = "ClusterKopfPeering"
                kube.custom.create_cluster_custom_object("kopf.dev", "v1", "clusterkopfpeerings", body)
            else:
                body["kind"] = "KopfPeering"
                kube.custom.create_namespaced_custom_object("kopf.dev", "v1", ns, "kopfpeerings", body)
        except ApiException as exc:
            if exc.status != 409:  # AlreadyExists is the usual case
                raise


def _parse(stamp: str) -> datetime:
    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


def leads(peering: dict[str, Any] | None, identity: str, priority: int, now: datetime) -> bool:
    """Kopf's rule: we act unless another live peer has a higher or equal priority."""
    for peer_id, info in ((peering or {}).get("status") or {}).items():
        if peer_id == identity or not isinstance(info, dict):
            continue
        try:
            deadline = _parse(str(info["lastseen"])) + timedelta(seconds=int(info.get("lifetime", 60)))
        except (KeyError, ValueError):
            continue
        if deadline > now and int(info.get("priority", 0)) >= priority:
            return False
    return True


async def watch_leadership(kube: KubeApi, reflector: Reflector, *, name: str, namespace: str | None,
                           identity: str, priority: int, interval: float = 1.0) -> None:
    while True:
        try:
            obj = await asyncio.to_thread(kube.get_peering, name, namespace)
            reflector.set_active(leads(obj, identity, priority, datetime.now(UTC)))
        except Exception as exc:  # keep the last verdict while the API server is away
            log.info("peering check failed: %s", exc, extra={"action": "peering"})
        await asyncio.sleep(interval)
