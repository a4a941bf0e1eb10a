"""Operator benchmark: apply N WorkflowRuns of a three-step workflow at once against a real API server.

    python bench/bench_k8s.py --runs 1000

Starts etcd + kube-apiserver (tests/k8s_harness.py), an embedded PostgreSQL, one worker process and
one operator process (configured as the Helm chart configures them), runs one warm-up WorkflowRun (so
the operator's watch is established: right after CRDs are installed the API server answers its first
LIST with 429 "storage is (re)initializing" and Kopf retries a second later), applies N runs with one
``kubectl apply``, and prints: time until all Succeeded, apply-to-Running latency p50/p95 (seen on a
watch; from the start of ``kubectl apply``, and per resource from the moment kubectl reports that
resource applied -- kubectl stores them one after the other), status patches per run (operator
metrics), and the operator's peak RSS. ``--trace`` adds where the time goes; ``--profile FILE`` samples
the operator with py-spy, if installed. Targets (issue 3): p50 apply-to-Running < 1 s,
<= phase changes + 1 status patches per run, operator memory < 300 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests" / "k8s"))

from durable import Workflow, assign  # noqa: E402

three = Workflow("bench_three_steps")


@three.step
def one(input: Any) -> Any:
    return {"n": input.get("n", 0)}


@three.step
def two(ctx: Any) -> Any:
    return assign(ctx, two=True)


@three.step
def three_(ctx: Any) -> Any:
    return assign(ctx, three=True)


def _peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=1000)
    p.add_argument("--timeout", type=float, default=600)
    p.add_argument("--trace", action="store_true",
                   help="Also print where the time goes per resource (the operator's DURABLE_OPERATOR_TRACE).")
    p.add_argument("--dump", action="store_true", help="Print the first WorkflowRun as stored, at the end.")
    p.add_argument("--standalone", action="store_true", help="Run the operator without peering.")
    p.add_argument("--profile", metavar="FILE",
                   help="Sample the operator with py-spy (if installed) from apply to all Succeeded; "
                        "collapsed stacks go to FILE.")
    args = p.parse_args()

    import kubernetes
    import pgserver
    from tests.support import WorkerProcess, new_schema, wait_until

    from conftest import NS, Cluster, start_kube  # the k8s test tier's helpers

    tmp = Path(tempfile.mkdtemp(prefix="durable-bench-k8s-"))
    url = str(pgserver.get_server(tmp / "pg", cleanup_mode="stop").get_uri())
    kube = start_kube()
    cluster = Cluster(kube, url, new_schema("bench"), tmp)
    try:
        cluster.worker = WorkerProcess(url, cluster.schema, ["bench.bench_k8s"], ["default=32"],
                                       log_path=tmp / "worker.log").start()
        wait_until(lambda: _registered(cluster), timeout=60, what="worker registration")
        trace_path = tmp / "operator-trace.txt"
        if args.trace:
            os.environ["DURABLE_OPERATOR_TRACE"] = str(trace_path)
        op = cluster.start_operator(*(["--standalone"] if args.standalone else []))
        os.environ.pop("DURABLE_OPERATOR_TRACE", None)
        assert op.proc is not None

        # Warm-up: one run end to end, so the operator's watch is established (the API server answers
        # "storage is (re)initializing" for a moment after CRDs are installed) and the timed runs measure
        # a running operator, not its start-up.
        cluster.kubectl("apply", "-f", "-", input=json.dumps(
            {"apiVersion": "durable.dev/v1alpha1", "kind": "WorkflowRun", "metadata": {"name": "warmup"},
             "spec": {"workflow": "bench_three_steps", "input": {"n": -1}}}))
        wait_until(lambda: (cluster.get("wfr", "warmup").get("status") or {}).get("phase") == "Succeeded",
                   timeout=60, what="the warm-up run")
        patches0 = _status_patches(op)
        writes0 = _api_writes(kube)

        seen_created: dict[str, float] = {}
        seen_running: dict[str, float] = {}
        succeeded: dict[str, float] = {}
        wall_added: dict[str, float] = {}
        wall_running: dict[str, float] = {}
        stop = threading.Event()
        kubernetes.config.load_kube_config(config_file=str(kube.kubeconfig))
        api = kubernetes.client.CustomObjectsApi()

        def watch() -> None:
            w = kubernetes.watch.Watch()
            while not stop.is_set():
                for ev in w.stream(api.list_namespaced_custom_object, "durable.dev", "v1alpha1", NS,
                                   "workflowruns", timeout_seconds=5):
                    obj = ev["object"]
                    name, phase = obj["metadata"]["name"], (obj.get("status") or {}).get("phase")
                    if name == "warmup":
                        continue
                    now = time.monotonic()
                    seen_created.setdefault(name, now)
                    wall_added.setdefault(name, time.time())
                    if phase and phase != "Pending":
                        seen_running.setdefault(name, now)
                        wall_running.setdefault(name, time.time())
                    if phase == "Succeeded":
                        succeeded.setdefault(name, now)

        threading.Thread(target=watch, daemon=True).start()
        docs = [json.dumps({"apiVersion": "durable.dev/v1alpha1", "kind": "WorkflowRun",
                            "metadata": {"name": f"bench-{i:05d}"},
                            "spec": {"workflow": "bench_three_steps", "input": {"n": i}}})
                for i in range(args.runs)]
        procs = {"operator": op.proc.pid, "kube-apiserver": kube._apiserver.pid if kube._apiserver else 0}
        cpu0 = {k: _cpu_seconds(v) for k, v in procs.items() if v}
        spy = (subprocess.Popen(["py-spy", "record", "--pid", str(op.proc.pid), "--rate", "250", "--format", "raw",
                                 "--output", args.profile, "--nonblocking"], stdout=subprocess.DEVNULL)
               if args.profile else None)
        t0, wall0 = time.monotonic(), time.time()
        applied = _apply_streaming(kube, NS, "\n---\n".join(docs))
        t_applied = time.monotonic() - t0
        wait_until(lambda: len(succeeded) >= args.runs, timeout=args.timeout, interval=0.2,
                   what=f"{args.runs} runs Succeeded")
        t_all = max(succeeded.values()) - t0
        if spy is not None:
            spy.send_signal(signal.SIGINT)
            spy.wait(30)
        cpu = {k: _cpu_seconds(procs[k]) - v for k, v in cpu0.items()}
        stop.set()
        lat = sorted(v - t0 for v in seen_running.values())
        own = sorted(v - applied[k] for k, v in seen_running.items())
        added = sorted(v - seen_created[k] for k, v in seen_running.items())
        lag = sorted(seen_created[k] - v for k, v in applied.items())  # watch ADDED after kubectl's report
        patches = _status_patches(op) - patches0
        peak = _peak_rss_mb(op.proc.pid)
        q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else lat * 99
        qo = statistics.quantiles(own, n=100) if len(own) >= 2 else own * 99
        qa = statistics.quantiles(added, n=100) if len(added) >= 2 else added * 99
        print(f"runs:                         {args.runs}")
        print(f"kubectl apply took:           {t_applied:.2f} s")
        print(f"all Succeeded after:          {t_all:.2f} s  ({args.runs / t_all:.0f} runs/s)")
        print(f"apply-to-Running p50 / p95:   {q[49]:.2f} s / {q[94]:.2f} s  (from the start of kubectl apply)")
        print(f"  per resource p50 / p95:     {qo[49]:.2f} s / {qo[94]:.2f} s  (from kubectl reporting it applied)")
        print(f"  per resource p50 / p95:     {qa[49]:.2f} s / {qa[94]:.2f} s  (from its ADDED event on a watch; "
              f"ADDED came {statistics.median(lag) * 1000:+.0f} ms after kubectl's report, median)")
        # Where the time goes, per resource: watch ADDED -> run row created (operator) -> picked by a worker.
        rows = cluster.sql("SELECT input->>'n', extract(epoch from created_at), extract(epoch from started_at) "
                           "FROM executions WHERE workflow = 'bench_three_steps' AND (input->>'n')::int >= 0")
        created = sorted(float(c) - wall0 - (seen_created.get(f"bench-{int(n):05d}", t0) - t0) for n, c, _ in rows)
        picked = sorted(float(s_) - float(c) for _, c, s_ in rows if s_ is not None)
        if len(created) >= 2 and len(picked) >= 2:
            qc, qp = statistics.quantiles(created, n=100), statistics.quantiles(picked, n=100)
            print(f"  ADDED -> run created p50/95: {qc[49]:.2f} s / {qc[94]:.2f} s  (operator start handler)")
            print(f"  created -> picked p50/95:    {qp[49]:.2f} s / {qp[94]:.2f} s  (worker)")
        # API server writes per run, by verb and resource (what the CPU-bound API server spends on us).
        writes = {k: v - writes0.get(k, 0.0) for k, v in _api_writes(kube).items()}
        per_run = ", ".join(f"{k} {v / args.runs:.2f}" for k, v in sorted(writes.items()))
        print(f"API writes per run:           {per_run}")
        print(f"status patches per run:       {patches / args.runs:.2f}  (reflector; +1 from the start handler)")
        print(f"operator peak RSS:            {peak:.0f} MB")
        print("CPU until all Succeeded:      " + ", ".join(f"{k} {v:.1f} s ({v / t_all:.0%})" for k, v in cpu.items())
              + f"; load average {os.getloadavg()[0]:.2f}")
        if args.dump:
            obj = cluster.kubectl("get", "wfr", "bench-00000", "-o", "json").stdout
            print(f"stored object ({len(obj)} bytes):\n{obj}")
    finally:
        cluster.stop()
        kube.stop()
    if args.trace:
        _breakdown(trace_path, wall_added, wall_running)


def _breakdown(path: Path, added: dict[str, float], running: dict[str, float]) -> None:
    """Per resource: watch ADDED -> start handler -> run created -> ... -> first non-Pending status on the watch."""
    first: dict[str, dict[str, float]] = {}
    patches: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        parts = line.split()
        if len(parts) < 3:
            continue
        key, stage, at = parts[0].split("/", 1)[1], parts[1], float(parts[2])
        phase = parts[3] if len(parts) > 3 else ""
        if stage == "acked":
            patches.setdefault(key, []).append(phase)
            if phase != "Pending":
                first.setdefault(key, {}).setdefault("acked-running", at)
        if stage == "sent" and phase != "Pending":
            first.setdefault(key, {}).setdefault("sent-running", at)
        first.setdefault(key, {}).setdefault(stage, at)
    for key, at in added.items():
        first.setdefault(key, {})["ADDED"] = at
    for key, at in running.items():
        first.setdefault(key, {})["Running on watch"] = at
    steps = [("ADDED", "recv"), ("recv", "kopf-event"), ("ADDED", "kopf-event"), ("kopf-event", "seen"),
             ("ADDED", "seen"), ("seen", "started"),
             ("started", "start-patched"), ("started", "sync"),
             ("sync", "read"), ("read", "sent"), ("sent", "acked"), ("started", "sent-running"),
             ("sent-running", "acked-running"), ("acked-running", "Running on watch"),
             ("ADDED", "Running on watch")]
    print("breakdown per resource (p50 / p95 / max, seconds):")
    for a, b in steps:
        d = sorted(v[b] - v[a] for v in first.values() if a in v and b in v)
        if len(d) >= 2:
            q = statistics.quantiles(d, n=100)
            print(f"  {a:>16} -> {b:<17} {q[49]:6.2f} / {q[94]:6.2f} / {d[-1]:6.2f}   (n={len(d)})")
    seqs: dict[str, int] = {}
    for phases in patches.values():
        seqs[" > ".join(phases)] = seqs.get(" > ".join(phases), 0) + 1
    print("reflector status patches per resource, by phases written:")
    for seq, n in sorted(seqs.items(), key=lambda kv: -kv[1])[:6]:
        print(f"  {n:5d}  {seq}")


def _apply_streaming(kube: Any, namespace: str, manifest: str) -> dict[str, float]:
    """``kubectl apply`` of all objects in one command; kubectl applies them one after the other and prints
    each as it is stored, so every resource gets its own apply time (monotonic clock)."""
    proc = subprocess.Popen([str(kube.bin_dir / "kubectl"), "-n", namespace, "apply", "--server-side", "-f", "-"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=kube.env(None))
    assert proc.stdin is not None and proc.stdout is not None
    threading.Thread(target=lambda: (proc.stdin.write(manifest), proc.stdin.close()), daemon=True).start()
    applied: dict[str, float] = {}
    for line in proc.stdout:  # "workflowrun.durable.dev/bench-00042 serverside-applied"
        applied[line.split()[0].rsplit("/", 1)[1]] = time.monotonic()
    if proc.wait() != 0:
        raise SystemExit("kubectl apply failed")
    return applied


def _status_patches(op: Any) -> float:
    return sum(v for k, v in op.metrics().items() if k.startswith("durable_operator_status_patches_total"))


def _api_writes(kube: Any) -> dict[str, float]:
    raw = kube.kubectl("get", "--raw", "/metrics").stdout
    writes: dict[str, float] = {}
    for line in raw.splitlines():
        if line.startswith("apiserver_request_total{") and 'verb="' in line:
            labels = dict(kv.split("=", 1) for kv in line[line.index("{") + 1:line.rindex("}")].split(","))
            verb, res = labels.get("verb", "").strip('"'), labels.get("resource", "").strip('"')
            sub = labels.get("subresource", '""').strip('"')
            if verb in ("POST", "PATCH", "PUT", "DELETE") and res in ("workflowruns", "events"):
                key = f"{verb} {res}{'/' + sub if sub else ''}"
                writes[key] = writes.get(key, 0) + float(line.rsplit(" ", 1)[1])
    return writes


def _registered(cluster: Any) -> bool:
    import psycopg

    try:
        return bool(cluster.sql("SELECT count(*) FROM workflows WHERE name = 'bench_three_steps'")[0][0])
    except psycopg.errors.UndefinedTable:
        return False


if __name__ == "__main__":
    main()
