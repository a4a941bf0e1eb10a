"""The operator's long-lived collaborators, built once at startup by :mod:`main` and used by handlers."""

from __future__ import annotations

from dataclasses import dataclass

from durable import Client

from .deliveries import Deliverer
from .kube import KubeApi
from .notify import Reflector


@dataclass
class App:
    client: Client
    kube: KubeApi
    reflector: Reflector
    deliverer: Deliverer


_app: App | None = None


def set_app(app: App | None) -> None:
    global _app
    _app = app


def get_app() -> App:
    if _app is None:
        raise RuntimeError("the operator is not started (durable_operator.main sets it up)")
    return _app
