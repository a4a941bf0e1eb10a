"""A real etcd + kube-apiserver for tests, in the spirit of controller-runtime's envtest.

Binaries come from ``scripts/k8s-test-binaries.sh`` (cache dir ``$DURABLE_TEST_BIN_DIR`` or
``~/.cache/durable/test-bin``). Needs the ``cryptography`` package for the TLS and
service-account keys.

There is no controller-manager or scheduler: Pods never run, namespaces never finish
terminating, and ServiceAccounts are not created automatically (create them explicitly;
``create_token`` works because TokenRequest is served by the API server itself).
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import ipaddress
import json
import os
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import TracebackType
from typing import IO

DEFAULT_BIN_DIR = Path.home() / ".cache" / "durable" / "test-bin"


class BinariesMissing(RuntimeError):
    """The Kubernetes test binaries are not installed."""


class CommandFailed(subprocess.CalledProcessError):
    def __str__(self) -> str:
        # CalledProcessError hides stderr, which is the only useful part of a kubectl/helm failure.
        return f"{super().__str__()}\nstdout: {self.stdout}\nstderr: {self.stderr}"


def bin_dir(required: tuple[str, ...] = ("etcd", "kube-apiserver", "kubectl", "helm")) -> Path:
    """Directory holding the test binaries; raises BinariesMissing if any is absent."""
    d = Path(os.environ.get("DURABLE_TEST_BIN_DIR") or DEFAULT_BIN_DIR)
    missing = [b for b in required if not os.access(d / b, os.X_OK)]
    if missing:
        raise BinariesMissing(
            f"Kubernetes test binaries {missing} not found in {d}; "
            "run scripts/k8s-test-binaries.sh (or point DURABLE_TEST_BIN_DIR at its output)"
        )
    return d


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pdeathsig() -> None:
    # Linux: kill etcd/apiserver if the test process dies without cleanup (e.g. SIGKILL by a CI timeout),
    # so they cannot pile up on a small machine.
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _write_certs(d: Path) -> None:
    """CA, serving cert for 127.0.0.1/localhost, and a service-account signing key (EC keys: fast to make)."""
    # Imported here so collecting tests that merely import this module works without cryptography.
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    def pem_key(k: ec.EllipticCurvePrivateKey) -> bytes:
        return k.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )

    now = dt.datetime.now(dt.UTC)
    ca_key, key, sa_key = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "durable-test-ca")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kube-apiserver")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=7))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    (d / "ca.crt").write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    (d / "apiserver.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (d / "apiserver.key").write_bytes(pem_key(key))
    (d / "sa.key").write_bytes(pem_key(sa_key))
    (d / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


class KubeAPIServer:
    """etcd + kube-apiserver on free loopback ports, with an admin (system:masters) token and RBAC on.

    Use as a context manager, or call start()/stop(). ``restart()`` restarts only the API server
    (same port, same etcd data), to simulate an API server outage.
    """

    def __init__(
        self,
        *,
        extra_apiserver_args: list[str] | None = None,
        startup_timeout: float = 60.0,
        keep_workdir: bool = False,
    ) -> None:
        self.bin_dir = bin_dir()
        self.extra_apiserver_args = list(extra_apiserver_args or [])
        self.startup_timeout = startup_timeout
        self.keep_workdir = keep_workdir
        self.workdir: Path | None = None
        self.token = secrets.token_hex(16)
        self.port = 0
        self.etcd_url = ""
        self._etcd: subprocess.Popen[bytes] | None = None
        self._apiserver: subprocess.Popen[bytes] | None = None
        self._logs: list[IO[bytes]] = []

    # ---- lifecycle -------------------------------------------------------------------------

    def start(self) -> KubeAPIServer:
        if self._apiserver is not None:
            return self
        self.workdir = Path(tempfile.mkdtemp(prefix="durable-kube-"))
        try:
            _write_certs(self.workdir)
            (self.workdir / "tokens.csv").write_text(f'{self.token},admin,admin,"system:masters"\n')
            self.port = free_port()
            self._start_etcd()
            self._start_apiserver()
            self.write_kubeconfig(self.kubeconfig, self.token, "admin")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        for attr in ("_apiserver", "_etcd"):
            proc: subprocess.Popen[bytes] | None = getattr(self, attr)
            if proc is not None:
                _terminate(proc)
                setattr(self, attr, None)
        for f in self._logs:
            f.close()
        self._logs.clear()
        if self.workdir is not None and not self.keep_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)
            self.workdir = None

    def restart(self) -> None:
        """Stop and start kube-apiserver only; etcd and its data survive."""
        if self._apiserver is None:
            raise RuntimeError("not started")
        _terminate(self._apiserver)
        self._apiserver = None
        self._start_apiserver()

    def __enter__(self) -> KubeAPIServer:
        return self.start()

    def __exit__(
        self, et: type[BaseException] | None, ev: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    # ---- accessors -------------------------------------------------------------------------

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def kubeconfig(self) -> Path:
        return self._dir / "kubeconfig"

    @property
    def ca_file(self) -> Path:
        return self._dir / "ca.crt"

    def env(self, kubeconfig: Path | None = None) -> dict[str, str]:
        """Env for subprocesses: KUBECONFIG set, test binaries first on PATH, helm state in the workdir."""
        d = self._dir
        return {
            **os.environ,
            "KUBECONFIG": str(kubeconfig or self.kubeconfig),
            "PATH": f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HELM_CACHE_HOME": str(d / "helm" / "cache"),
            "HELM_CONFIG_HOME": str(d / "helm" / "config"),
            "HELM_DATA_HOME": str(d / "helm" / "data"),
        }

    def kubectl(
        self, *args: str, check: bool = True, input: str | None = None, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._run("kubectl", args, check, input, kubeconfig)

    def helm(
        self, *args: str, check: bool = True, input: str | None = None, kubeconfig: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return self._run("helm", args, check, input, kubeconfig)

    # ---- service accounts ------------------------------------------------------------------

    def create_token(self, service_account: str, namespace: str, duration: str = "1h") -> str:
        out = self.kubectl("create", "token", service_account, "-n", namespace, f"--duration={duration}")
        return out.stdout.strip()

    def service_account_kubeconfig(
        self, service_account: str, namespace: str, path: Path | None = None, duration: str = "1h"
    ) -> Path:
        """Kubeconfig authenticating as an existing ServiceAccount (e.g. the Helm chart's operator SA)."""
        token = self.create_token(service_account, namespace, duration)
        path = path or self._dir / f"kubeconfig-{namespace}-{service_account}"
        return self.write_kubeconfig(
            path, token, f"system:serviceaccount:{namespace}:{service_account}", namespace
        )

    def write_kubeconfig(self, path: Path, token: str, user: str, namespace: str = "default") -> Path:
        # JSON is valid YAML, so no YAML library is needed; the CA is embedded so the file is self-contained.
        ca = base64.b64encode(self.ca_file.read_bytes()).decode()
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {"name": "durable-test", "cluster": {"server": self.server, "certificate-authority-data": ca}}
            ],
            "users": [{"name": user, "user": {"token": token}}],
            "contexts": [
                {
                    "name": "durable-test",
                    "context": {"cluster": "durable-test", "user": user, "namespace": namespace},
                }
            ],
            "current-context": "durable-test",
        }
        path.write_text(json.dumps(cfg, indent=2))
        path.chmod(0o600)
        return path

    # ---- internals -------------------------------------------------------------------------

    @property
    def _dir(self) -> Path:
        if self.workdir is None:
            raise RuntimeError("KubeAPIServer is not started")
        return self.workdir

    def _run(
        self, tool: str, args: tuple[str, ...], check: bool, input: str | None, kubeconfig: Path | None
    ) -> subprocess.CompletedProcess[str]:
        cmd = [str(self.bin_dir / tool), *args]
        res = subprocess.run(
            cmd, input=input, capture_output=True, text=True, env=self.env(kubeconfig), timeout=120
        )
        if check and res.returncode != 0:
            raise CommandFailed(res.returncode, cmd, res.stdout, res.stderr)
        return res

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen[bytes]:
        log = open(self._dir / f"{name}.log", "ab")  # noqa: SIM115 - must outlive this call; stop() closes it
        self._logs.append(log)
        return subprocess.Popen(
            [str(self.bin_dir / name), *args],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            preexec_fn=_pdeathsig if sys.platform == "linux" else None,
        )

    def _start_etcd(self) -> None:
        d = self._dir
        client, peer = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
        self.etcd_url = client
        self._etcd = self._spawn(
            "etcd",
            [
                f"--data-dir={d / 'etcd'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
                "--quota-backend-bytes=268435456",  # 256 MiB: tests store little; fail fast on runaway writes
                "--unsafe-no-fsync",  # throwaway data: fsync only costs time on CI disks
                "--log-level=warn",
            ],
        )

    def _start_apiserver(self) -> None:
        d = self._dir
        self._apiserver = self._spawn(
            "kube-apiserver",
            [
                f"--etcd-servers={self.etcd_url}",
                "--bind-address=127.0.0.1",
                f"--secure-port={self.port}",
                f"--tls-cert-file={d / 'apiserver.crt'}",
                f"--tls-private-key-file={d / 'apiserver.key'}",
                f"--cert-dir={d / 'certs'}",
                f"--token-auth-file={d / 'tokens.csv'}",
                "--authorization-mode=RBAC",
                "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
                f"--service-account-key-file={d / 'sa.pub'}",
                f"--service-account-signing-key-file={d / 'sa.key'}",
                "--service-cluster-ip-range=10.96.0.0/24",
                "--allow-privileged=true",
                # No controller-manager creates the "default" ServiceAccount, so this would reject every Pod.
                "--disable-admission-plugins=ServiceAccount",
                # APF adds background config churn and goroutines; tests do not need request fairness.
                "--enable-priority-and-fairness=false",
                # Nothing watches Endpoints of the kubernetes Service; skip its periodic reconcile writes.
                "--endpoint-reconciler-type=none",
                "--profiling=false",
                *self.extra_apiserver_args,
            ],
        )
        self._wait_ready()

    def _wait_ready(self) -> None:
        ctx = ssl.create_default_context(cafile=str(self.ca_file))
        req = urllib.request.Request(
            f"{self.server}/readyz", headers={"Authorization": f"Bearer {self.token}"}
        )
        deadline = time.monotonic() + self.startup_timeout
        last = ""
        while time.monotonic() < deadline:
            for name, proc in (("etcd", self._etcd), ("kube-apiserver", self._apiserver)):
                if proc is not None and proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{self._log_tail(name)}")
            try:
                with urllib.request.urlopen(req, context=ctx, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except (OSError, urllib.error.URLError) as e:
                last = str(e)
            time.sleep(0.1)
        raise TimeoutError(
            f"kube-apiserver not ready after {self.startup_timeout}s ({last}):\n"
            + self._log_tail("kube-apiserver")
        )

    def _log_tail(self, name: str, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join((self._dir / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
        return ""


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
