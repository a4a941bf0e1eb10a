"""The operator's own Kubernetes API calls (status patches, Events, child runs), outside Kopf's handlers.

Kopf patches what its handlers return; everything the notification listener and the schedules do
goes through this one synchronous wrapper of the ``kubernetes`` client, called on threads. Merge
patches carry no resourceVersion, so they never fail with 409 Conflict; transient errors (API server
restarting, timeouts) raise :class:`Transient` and callers retry later.
"""

from __future__ import annotations

import json
import os
import uuid
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import kubernetes
import urllib3
from kubernetes.client.exceptions import ApiException

from .constants import COMPONENT, GROUP, RUNS, SCHEDULES, VERSION

NotFound = 404
AlreadyExists = 409


class Transient(Exception):
    """The API server could not be reached or answered 5xx/429; try again later."""


def _wrap(exc: Exception) -> Exception:
    if isinstance(exc, ApiException) and exc.status is not None and exc.status < 500 and exc.status != 429:
        return exc
    return Transient(str(exc)[:300])


class KubeApi:
    """Credentials from ``KUBECONFIG`` (or ~/.kube/config) or, inside a Pod, the service account."""

    def __init__(self, pool_size: int = 16) -> None:
        config = kubernetes.client.Configuration()
        if os.environ.get("KUBERNETES_SERVICE_HOST") and not os.environ.get("KUBECONFIG"):
            kubernetes.config.load_incluster_config(client_configuration=config)  # type: ignore[no-untyped-call]
        else:
            kubernetes.config.load_kube_config(client_configuration=config)  # type: ignore[no-untyped-call]
        config.connection_pool_maxsize = pool_size
        config.retries = 0
        self.api_client = kubernetes.client.ApiClient(config)
        self.custom = kubernetes.client.CustomObjectsApi(self.api_client)
        self.core = kubernetes.client.CoreV1Api(self.api_client)
        self.timeout = (5, 20)
        self._urllib3_timeout = urllib3.Timeout(connect=5, read=20)

    def _raw(self, method: str, path: str, body: dict[str, Any], content_type: str = "application/json",
             want: bool = True) -> dict[str, Any]:
        """One request on the client's own connection pool and credentials, without its per-call validation
        and model (de)serialisation: the reflector's few request kinds, thousands per second, pay only for
        the HTTP exchange and one ``json.loads``. Errors as from the ``kubernetes`` client (``ApiException``
        with ``status`` for 4xx, :class:`Transient` otherwise)."""
        config = self.api_client.configuration
        headers = {"Content-Type": content_type, "Accept": "application/json",
                   "User-Agent": self.api_client.user_agent}
        for auth in config.auth_settings().values():
            if auth["in"] == "header" and auth["value"]:
                headers[auth["key"]] = auth["value"]
        try:
            r = self.api_client.rest_client.pool_manager.request(
                method, config.host + path, body=json.dumps(body, separators=(",", ":")).encode(), headers=headers,
                timeout=self._urllib3_timeout, retries=False, preload_content=True)
        except Exception as exc:
            raise Transient(str(exc)[:300]) from exc
        if r.status >= 400:
            error = ApiException(status=r.status, reason=r.reason)
            error.body = r.data[:2000].decode(errors="replace")
            raise _wrap(error)
        return dict(json.loads(r.data)) if want and r.data else {}

    def _run_path(self, namespace: str, name: str, sub: str = "") -> str:
        return (f"/apis/{GROUP}/{VERSION}/namespaces/{quote(namespace, safe='')}/{RUNS}/{quote(name, safe='')}"
                + (f"/{sub}" if sub else ""))

    def _call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, _request_timeout=self.timeout, **kwargs)
        except Exception as exc:
            raise _wrap(exc) from exc

    # ---- WorkflowRuns ------------------------------------------------------------------

    def patch_run_status(self, namespace: str, name: str, status: dict[str, Any]) -> dict[str, Any]:
        """A merge patch of ``status``; returns the resource's ``metadata`` (all the reflector reads)."""
        body = self._raw("PATCH", self._run_path(namespace, name, "status"), {"status": status},
                         "application/merge-patch+json")
        return {"metadata": body.get("metadata") or {}}

    def patch_run(self, namespace: str, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        return self._raw("PATCH", self._run_path(namespace, name), patch, "application/merge-patch+json")

    def create_run(self, namespace: str, body: dict[str, Any]) -> dict[str, Any]:
        return dict(self._call(self.custom.create_namespaced_custom_object, GROUP, VERSION, namespace, RUNS, body))

    def list_runs(self, namespace: str, label_selector: str) -> list[dict[str, Any]]:
        res = self._call(self.custom.list_namespaced_custom_object, GROUP, VERSION, namespace, RUNS,
                         label_selector=label_selector)
        return list(res.get("items", []))

    def delete_run(self, namespace: str, name: str) -> None:
        try:
            self._call(self.custom.delete_namespaced_custom_object, GROUP, VERSION, namespace, RUNS, name)
        except ApiException as exc:
            if exc.status != NotFound:
                raise

    # ---- WorkflowSchedules -------------------------------------------------------------

    def patch_schedule_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        self._call(self.custom.patch_namespaced_custom_object_status, GROUP, VERSION, namespace, SCHEDULES, name,
                   {"status": status})

    # ---- inputs from ConfigMaps / Secrets ----------------------------------------------

    def read_config_map_key(self, namespace: str, name: str, key: str) -> str | None:
        cm = self._call(self.core.read_namespaced_config_map, name, namespace)
        return (cm.data or {}).get(key)

    def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        import base64

        secret = self._call(self.core.read_namespaced_secret, name, namespace)
        raw = (secret.data or {}).get(key)
        return None if raw is None else base64.b64decode(raw).decode()

    # ---- Events and peering ------------------------------------------------------------

    def post_event(self, ref: dict[str, Any], type_: str, reason: str, message: str) -> None:
        now = datetime.now(UTC)
        body = {
            "metadata": {"name": f"{ref['name']}.{uuid.uuid4().hex[:12]}", "namespace": ref["namespace"]},
            "involvedObject": ref, "reason": reason, "message": message[:1024], "type": type_,
            "firstTimestamp": now.isoformat(), "lastTimestamp": now.isoformat(), "count": 1,
            "source": {"component": COMPONENT}, "reportingComponent": COMPONENT,
            "reportingInstance": os.environ.get("HOSTNAME", COMPONENT),
        }
        self._raw("POST", f"/api/v1/namespaces/{quote(ref['namespace'], safe='')}/events", body, want=False)

    def get_peering(self, name: str, namespace: str | None) -> dict[str, Any] | None:
        try:
            if namespace is None:
                obj = self._call(self.custom.get_cluster_custom_object, "kopf.dev", "v1", "clusterkopfpeerings", name)
            else:
                obj = self._call(self.custom.get_namespaced_custom_object, "kopf.dev", "v1", namespace,
                                 "kopfpeerings", name)
        except ApiException as exc:
            if exc.status == NotFound:
                return None
            raise
        return dict(obj)


def ref_of(namespace: str, name: str, uid: str | None, kind: str, api_version: str) -> dict[str, Any]:
    ref = {"apiVersion": api_version, "kind": kind, "name": name, "namespace": namespace}
    if uid:
        ref["uid"] = uid
    return ref
