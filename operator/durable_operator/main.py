"""``durable-operator``: the command line that runs the Kopf operator (DESIGN §6).

Flags: ``--namespace NS`` (repeatable) or ``--all-namespaces``; ``--liveness-port``;
``--metrics-port``; ``--priority`` (peering; random by default so replicas of one Deployment elect
one active member); ``--resync-seconds``; ``--watch-timeout`` (seconds before the API server ends each
watch and Kopf resumes it). Kubernetes credentials come from ``KUBECONFIG`` or the in-cluster service
account; the database from ``DURABLE_DATABASE_URL`` / ``DURABLE_SCHEMA``.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import logging
import os
import random
import socket
import sys
from concurrent.futures import ThreadPoolExecutor
from typing import Any, cast

import kopf
from prometheus_client import start_http_server

from durable import Client
from durable.logs import setup as setup_logs

from . import runs, schedules, trace  # noqa: F401  (registers the Kopf handlers)
from .app import App, get_app, set_app
from .constants import FINALIZER, PEERING_NAME
from .deliveries import Deliverer
from .kube import KubeApi
from .notify import Reflector
from .peering import ensure_peering_object, watch_leadership

log = logging.getLogger("durable_operator")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="durable-operator", description="The Durable Kubernetes operator.")
    scope = p.add_mutually_exclusive_group(required=True)
    scope.add_argument("--namespace", "-n", action="append", dest="namespaces", metavar="NS",
                       help="Watch this namespace (repeatable).")
    scope.add_argument("--all-namespaces", "-A", action="store_true", help="Watch every namespace.")
    p.add_argument("--liveness-port", type=int, default=None, help="Serve /healthz on this port.")
    p.add_argument("--metrics-port", type=int, default=None, help="Serve Prometheus /metrics on this port.")
    p.add_argument("--priority", type=int, default=None,
                   help="Peering priority; the live replica with the highest one acts (default: random).")
    p.add_argument("--peering", default=PEERING_NAME, help="Name of the (Cluster)KopfPeering object.")
    p.add_argument("--standalone", action="store_true", help="No peering: act even if other replicas run.")
    p.add_argument("--resync-seconds", type=float, default=float(os.environ.get("DURABLE_OPERATOR_RESYNC", 30)),
                   help="Re-check every active run this often, in case a notification was lost.")
    p.add_argument("--watch-timeout", type=int, default=int(os.environ.get("DURABLE_OPERATOR_WATCH_TIMEOUT", 300)),
                   help="Ask the API server to end each watch after this many seconds (Kopf then reconnects).")
    p.add_argument("--log-level", default=os.environ.get("DURABLE_LOG_LEVEL", "INFO"))
    return p.parse_args(argv)


class SpecDiffBase(kopf.AnnotationsDiffBaseStorage):
    """Kopf's "essence" (what update handlers compare) without metadata, built without deep-copying the whole
    object first: Kopf builds it on every watch event, and the status and managedFields it would copy and then
    drop are most of a WorkflowRun. Equal to Kopf's own result when ``metadata`` is ignored."""

    def build(self, *, body: kopf.Body, extra_fields: Any = None) -> kopf.BodyEssence:
        skipped = ("apiVersion", "kind", "metadata", "status")
        # Extra fields (of field-filtered handlers: ``spec``) under a kept stanza are copied anyway.
        if any(not path or path[0] in skipped for path in extra_fields or ()) or self.ignored_fields != ["metadata"]:
            return super().build(body=body, extra_fields=extra_fields)
        essence = {key: copy.deepcopy(value) for key, value in body.items()
                   if key not in skipped}
        self.remove_empty_stanzas(cast(kopf.BodyEssence, essence))
        return cast(kopf.BodyEssence, essence)


def configure(settings: kopf.OperatorSettings, args: argparse.Namespace) -> None:
    settings.persistence.finalizer = FINALIZER
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="durable.dev")
    # Only spec changes matter to the handlers: without ignoring metadata, the completed label (and any
    # label a user adds) would make Kopf re-write this annotation, one more PATCH per run.
    settings.persistence.diffbase_storage = SpecDiffBase(
        prefix="durable.dev", key="last-handled-configuration", ignored_fields=["metadata"])
    # Watches end every few minutes on their own; a silent connection is dropped after client_timeout.
    # Kopf re-lists on 410 Gone and reconnects with back-off after API server restarts.
    settings.watching.server_timeout = args.watch_timeout
    settings.watching.client_timeout = args.watch_timeout + 30
    settings.watching.connect_timeout = 10
    settings.watching.reconnect_backoff = 1.0
    settings.networking.request_timeout = 30
    settings.networking.connect_timeout = 10
    settings.posting.level = logging.WARNING  # phase-change Events are posted by the reflector instead
    settings.batching.error_delays = (1, 2, 5, 10, 20, 30)
    settings.execution.max_workers = 16
    settings.peering.name = args.peering
    settings.peering.priority = args.priority
    settings.peering.mandatory = not args.standalone
    settings.peering.standalone = args.standalone
    settings.peering.clusterwide = bool(args.all_namespaces)
    settings.peering.lifetime = 60  # a SIGKILLed leader is replaced within ~60 s (Kopf touches every 50-55 s)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    trace.hook_watch()
    if args.priority is None:
        args.priority = random.randint(1, 1_000_000)
    setup_logs(args.log_level)
    durable_handlers = logging.getLogger("durable").handlers
    for name in ("durable_operator", "kopf"):
        logger = logging.getLogger(name)
        logger.handlers[:] = durable_handlers
        logger.setLevel(args.log_level.upper())
        logger.propagate = False
    logging.getLogger("kopf.objects").setLevel(logging.WARNING)  # per-handler chatter
    identity = f"{socket.gethostname()}/{os.getpid()}/{random.getrandbits(32):08x}"
    if args.metrics_port:
        start_http_server(args.metrics_port)

    kube = KubeApi(pool_size=128)  # the reflector's workers patch concurrently
    if not args.standalone:
        ensure_peering_object(kube, args.peering, [] if args.all_namespaces else args.namespaces)
    client = Client(pool_size=12)  # starts, deliveries, cancellation: never queued behind the reflector's reads
    reader = Client(pool_size=16)  # the reflector's
    reflector = Reflector(reader, kube, resync=args.resync_seconds, active=args.standalone, workers=96)
    set_app(App(client=client, kube=kube, reflector=reflector, deliverer=Deliverer(client)))

    @kopf.on.startup()
    async def startup(settings: kopf.OperatorSettings, **_: Any) -> None:
        configure(settings, args)
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(128, thread_name_prefix="durable-op"))
        await reflector.start()
        bg = [asyncio.create_task(schedules.Scheduler(kube).run(), name="scheduler")]
        if not args.standalone:
            bg.append(asyncio.create_task(watch_leadership(
                kube, reflector, name=args.peering,
                namespace=None if args.all_namespaces else args.namespaces[0],
                identity=identity, priority=args.priority), name="leadership"))
        _background.extend(bg)
        log.info("operator started", extra={"action": "startup", "priority": args.priority,
                                            "namespaces": args.namespaces or "*"})

    @kopf.on.cleanup()
    async def cleanup(**_: Any) -> None:
        for task in _background:
            task.cancel()
        await get_app().reflector.stop()
        await asyncio.to_thread(get_app().client.close)
        await asyncio.to_thread(reader.close)
        trace.flush()

    liveness = f"http://0.0.0.0:{args.liveness_port}/healthz" if args.liveness_port else None
    try:
        kopf.run(
            clusterwide=bool(args.all_namespaces),
            namespaces=args.namespaces or (),
            standalone=args.standalone,
            priority=args.priority,
            peering_name=args.peering,
            identity=cast(Any, identity),
            liveness_endpoint=liveness,
        )
    except KeyboardInterrupt:
        sys.exit(0)


_background: list[asyncio.Task[None]] = []

if __name__ == "__main__":
    main()
