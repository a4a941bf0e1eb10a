"""Fixtures of the Kubernetes tier: one real API server, one operator and one worker per test module.

The operator and the worker run as processes configured exactly as the Helm chart configures them:
``DURABLE_DATABASE_URL``, ``DURABLE_SCHEMA``, ``KUBECONFIG`` and the operator's ``--namespace``,
``--liveness-port`` and ``--metrics-port`` flags. Tests drive everything with ``kubectl``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from tests.k8s_harness import BinariesMissing, KubeAPIServer, free_port
from tests.support import CHILD_PYTHONPATH, ROOT, ChildProcess, WorkerProcess, missing_binaries, wait_until

EXAMPLE_APPS = ["examples.order_processing", "examples.expense_approval", "examples.dashboard",
                "examples.bulk_emailer", "examples.trip_booking", "examples.daily_report",
                "examples.trial_reminder", "examples.payment_flow"]
NS = "durable-test"
LEADER_PRIORITY = 100  # the module's operator; fault tests start replicas below or above it


def start_kube(*apiserver_args: str) -> KubeAPIServer:
    try:
        server = KubeAPIServer(extra_apiserver_args=list(apiserver_args))
    except BinariesMissing as e:
        missing_binaries(e)
    server.start()
    server.kubectl("apply", "-f", str(ROOT / "crds"))
    server.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                   "crd/workflowruns.durable.dev", "crd/workflowschedules.durable.dev",
                   "crd/kopfpeerings.kopf.dev", "crd/clusterkopfpeerings.kopf.dev")
    server.kubectl("create", "namespace", NS)
    return server


class OperatorProcess(ChildProcess):
    """``durable-operator`` as a child process, the way the chart's Deployment runs it."""

    def __init__(self, kube: KubeAPIServer, url: str, schema: str, log_path: Path, *extra: str) -> None:
        exe = Path(sys.executable).parent / "durable-operator"
        cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "durable_operator.main"]
        self.liveness_port, self.metrics_port = free_port(), free_port()
        self.args = [*cmd, "--namespace", NS, "--liveness-port", str(self.liveness_port),
                     "--metrics-port", str(self.metrics_port), *extra]
        self.env = {**kube.env(), "DURABLE_DATABASE_URL": url, "DURABLE_SCHEMA": schema,
                    "DURABLE_OPERATOR_RESYNC": "10", "PYTHONPATH": CHILD_PYTHONPATH}
        self.log_path = log_path
        self.stop_grace = 15.0

    def start(self, wait: bool = True) -> OperatorProcess:
        out = open(self.log_path, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(self.args, env=self.env, cwd=ROOT, stdout=out, stderr=out)
        if wait:
            wait_until(self.healthy, timeout=60, interval=0.2, what=f"operator liveness (log: {self.log_path})")
        return self

    def healthy(self) -> bool:
        assert self.proc is not None
        if self.proc.poll() is not None:
            raise AssertionError(f"operator exited {self.proc.returncode}:\n{self.log_tail()}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as r:
                return bool(r.status == 200)
        except OSError:
            return False

    def metrics(self) -> dict[str, float]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            text = r.read().decode()
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line and not line.startswith("#"):
                key, _, value = line.rpartition(" ")
                out[key] = float(value)
        return out

    def metric(self, prefix: str) -> float:
        """The sum of every sample whose name (with labels) starts with ``prefix``."""
        return sum(v for k, v in self.metrics().items() if k.startswith(prefix))

    def log_tail(self, lines: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""



class Cluster:
    """What a test needs: kubectl, the database, the operator and the worker."""

    def __init__(self, kube: KubeAPIServer, url: str, schema: str, tmp: Path) -> None:
        self.kube, self.url, self.schema, self.tmp = kube, url, schema, tmp
        self.operators: list[OperatorProcess] = []
        self.worker: WorkerProcess | None = None

    # ---- processes ---------------------------------------------------------------------------

    def start_worker(self, extra_apps: Sequence[str] = (), extra_workflows: Sequence[str] = ()) -> WorkerProcess:
        """``extra_apps``: more modules for the worker (a test module's ``WORKER_APPS``); ``extra_workflows``:
        names they define, waited for like the examples' (a test module's ``WORKER_WORKFLOWS``)."""
        self.worker = WorkerProcess(self.url, self.schema, [*EXAMPLE_APPS, *extra_apps], ["default=16"],
                                    log_path=self.tmp / "worker.log").start()
        def registered() -> bool:
            try:
                return bool(self.sql("SELECT count(*) FROM workflows")[0][0] >= 8) and all(
                    self.sql("SELECT count(*) FROM workflows WHERE name = %s", w)[0][0] for w in extra_workflows)
            except psycopg.errors.UndefinedTable:
                return False  # the worker has not migrated the schema yet

        wait_until(registered, timeout=60, interval=0.2, what="the worker to register the example workflows")
        return self.worker

    def start_operator(self, *extra: str, wait: bool = True) -> OperatorProcess:
        op = OperatorProcess(self.kube, self.url, self.schema, self.tmp / f"operator-{len(self.operators)}.log",
                             *extra)
        self.operators.append(op.start(wait=wait))
        return op

    def stop(self) -> None:
        for op in self.operators:
            op.stop()
        if self.worker:
            self.worker.stop()

    # ---- kubectl ---------------------------------------------------------------------------------

    def kubectl(self, *args: str, check: bool = True, input: str | None = None) -> subprocess.CompletedProcess[str]:
        return self.kube.kubectl("-n", NS, *args, check=check, input=input)

    def apply(self, manifest: str) -> None:
        self.kubectl("apply", "-f", "-", input=manifest)

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return dict(json.loads(self.kubectl("get", kind, name, "-o", "json").stdout))

    def exists(self, kind: str, name: str) -> bool:
        return self.kubectl("get", kind, name, "--ignore-not-found", "-o", "name").stdout.strip() != ""

    def status(self, name: str) -> dict[str, Any]:
        return dict(self.get("wfr", name).get("status") or {})

    def wait_phase(self, name: str, phases: str | tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
        want = (phases,) if isinstance(phases, str) else phases
        last: dict[str, Any] = {}

        def reached() -> bool:
            nonlocal last
            last = self.status(name)
            return last.get("phase") in want

        try:
            wait_until(reached, timeout=timeout, interval=0.3, what=f"wfr/{name} phase in {want}")
        except AssertionError as exc:
            logs = "\n".join(op.log_tail(30) for op in self.operators)
            raise AssertionError(f"{exc}; last status: {json.dumps(last)[:1500]}\noperator log:\n{logs}") from None
        return last

    def wait_until(self, pred: Callable[[], Any], timeout: float = 30, what: str = "condition") -> Any:
        return wait_until(pred, timeout=timeout, interval=0.3, what=what)

    def sql(self, query: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.url, autocommit=True, options=f"-c search_path={self.schema}") as conn:
            return [tuple(r) for r in conn.execute(query, params).fetchall()]

    def events(self, name: str) -> list[str]:
        out = self.kubectl("get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json").stdout
        return [f"{e['reason']}: {e['message']}" for e in json.loads(out)["items"]]


def run_manifest(name: str, workflow: str, input: dict[str, Any] | None = None, **spec: Any) -> str:
    body = {"apiVersion": "durable.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": name},
            "spec": {"workflow": workflow, **({"input": input} if input is not None else {}), **spec}}
    return json.dumps(body)


@pytest.fixture(scope="module")
def cluster(database_url: str, schema: str, tmp_path_factory: pytest.TempPathFactory,
            request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """A test module may set ``WORKER_APPS`` (extra modules for the worker, e.g. ``tests.k8s.apps``) and
    ``WORKER_WORKFLOWS`` (the workflow names they register, waited for before the tests start)."""
    kube = start_kube()
    c = Cluster(kube, database_url, schema, tmp_path_factory.mktemp("k8s"))
    try:
        c.start_worker(getattr(request.module, "WORKER_APPS", ()), getattr(request.module, "WORKER_WORKFLOWS", ()))
        c.start_operator("--priority", str(LEADER_PRIORITY))
        yield c
    finally:
        c.stop()
        kube.stop()


def now() -> float:
    return time.time()
