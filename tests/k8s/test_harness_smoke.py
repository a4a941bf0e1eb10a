"""Smoke test: the harness runs a real kube-apiserver whose state survives an API server restart."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# Importable as tests.k8s_harness whatever pytest's rootdir/import mode is (tests/k8s has no __init__.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.k8s_harness import BinariesMissing, KubeAPIServer
from tests.support import missing_binaries

pytestmark = pytest.mark.k8s

CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: widgets.smoke.durable.test
spec:
  group: smoke.durable.test
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                size: {type: integer}
"""

WIDGET = """
apiVersion: smoke.durable.test/v1
kind: Widget
metadata: {name: w1, namespace: demo}
spec: {size: 3}
"""


@pytest.fixture(scope="module")
def kube() -> Iterator[KubeAPIServer]:
    try:
        server = KubeAPIServer()
    except BinariesMissing as e:
        missing_binaries(e)
    t0 = time.monotonic()
    with server:
        print(f"kube-apiserver ready in {time.monotonic() - t0:.1f}s at {server.server}")
        yield server


def test_namespace_crd_and_restart(kube: KubeAPIServer) -> None:
    kube.kubectl("create", "namespace", "demo")
    ns = json.loads(kube.kubectl("get", "ns", "demo", "-o", "json").stdout)
    assert ns["metadata"]["name"] == "demo"

    kube.kubectl("apply", "-f", "-", input=CRD)
    kube.kubectl("wait", "--for=condition=Established", "crd/widgets.smoke.durable.test", "--timeout=30s")
    kube.kubectl("apply", "-f", "-", input=WIDGET)

    kube.restart()

    w = json.loads(kube.kubectl("get", "widgets", "w1", "-n", "demo", "-o", "json").stdout)
    assert w["spec"]["size"] == 3


def test_rbac_enforced_for_service_account(kube: KubeAPIServer) -> None:
    kube.kubectl("create", "namespace", "rbac")
    kube.kubectl("create", "serviceaccount", "op", "-n", "rbac")
    sa_cfg = kube.service_account_kubeconfig("op", "rbac")

    denied = kube.kubectl("get", "configmaps", "-n", "rbac", kubeconfig=sa_cfg, check=False)
    assert denied.returncode != 0 and "forbidden" in denied.stderr.lower()

    kube.kubectl("create", "role", "cm-reader", "-n", "rbac", "--verb=get,list", "--resource=configmaps")
    kube.kubectl("create", "rolebinding", "op", "-n", "rbac", "--role=cm-reader", "--serviceaccount=rbac:op")
    kube.kubectl("get", "configmaps", "-n", "rbac", kubeconfig=sa_cfg)
