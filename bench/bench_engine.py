"""Durable's benchmark, side by side with DBOS Transact on the same PostgreSQL server.

    python -m bench.bench_engine [--workflows 5000] [--rounds 5] [--concurrency 8] [--sequential 300]
                                 [--workers 1] [--skip-dbos] [--database-url URL]

Our engine runs on real worker processes (``durable worker --app bench.apps``) serving a fresh
schema; this process is only the client (``Client.start`` then ``Client.wait``). Measured:

(a) throughput: ``--workflows`` runs of a three-step workflow of trivial steps, started and
    awaited by ``--concurrency`` client threads (the same shape as the DBOS peer), after a
    warm-up; with PostgreSQL's committed transactions and write transactions per workflow.
    Measured ``--rounds`` times, each of our rounds followed by one of DBOS, so a drift of the
    machine's speed during the run falls on both peers alike; the ratio reported is the median
    of the rounds' ratios, and every round's figures are printed;
(b) sequential latency: ``--sequential`` runs one at a time, start to ``wait`` returning;
(c) event wake-up latency: ``send_event`` to the moment the step after the wait runs again;
(d) timer precision: how late a 200 ms durable ``sleep`` fires after its due time;
(e) DBOS Transact (``bench/dbos_peer.py``, in a subprocess, its own database on the same
    server) for (a) in every round and (b) in the first, with the ratios.

The database is ``--database-url`` or ``DURABLE_DATABASE_URL``, else an embedded PostgreSQL
(the ``pgserver`` wheel) in a temporary directory. A table is printed, then, as the last line,
one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from bench.load import closed_loop
from durable import Client

REPO_ROOT = Path(__file__).resolve().parent.parent
APP_MODULE = "bench.apps"
THREE_STEPS = "bench_three_steps"
EVENT_WF = "bench_event"
TIMER_WF = "bench_timer"
WORKFLOWS = (THREE_STEPS, EVENT_WF, TIMER_WF)
TIMER_MS = 200  # as bench.apps.TIMER_MS; passed as input so the two cannot drift apart
WARMUP_RUNS = 20  # as bench/dbos_peer.py
DBOS_DATABASE = "dbos_bench"  # the database bench/dbos_peer.py uses on the same server


def log(msg: str) -> None:
    print(f"[bench] {msg}", file=sys.stderr, flush=True)


# -- statistics ---------------------------------------------------------------------------------------


def pct_ms(samples: list[float], pct: int) -> float:
    """Percentile in ms of samples in seconds; "inclusive" as the DBOS peer computes it."""
    if len(samples) == 1:
        return samples[0] * 1000
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1] * 1000


def summary_ms(samples: list[float]) -> dict[str, float]:
    return {"p50_ms": pct_ms(samples, 50), "p95_ms": pct_ms(samples, 95),
            "mean_ms": statistics.fmean(samples) * 1000, "max_ms": max(samples) * 1000,
            "min_ms": min(samples) * 1000, "n": float(len(samples))}


# -- the database -------------------------------------------------------------------------------------


@contextlib.contextmanager
def database(url: str | None) -> Iterator[str]:
    """The given URL, or an embedded PostgreSQL in a temporary directory, stopped and removed after."""
    if url:
        yield url
        return
    import pgserver

    tmp = tempfile.mkdtemp(prefix="durable-bench-")
    log("starting an embedded PostgreSQL (pgserver)")
    server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="stop")
    try:
        yield str(server.get_uri())
    finally:
        server.cleanup()
        shutil.rmtree(tmp, ignore_errors=True)


def db_counters(url: str, datname: str | None = None) -> dict[str, int]:
    """Committed transactions of a database (pg_stat_database; this one by default), the cluster's
    next xid (it advances once per transaction that wrote anything) and its WAL position."""
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute(
            "SELECT (SELECT coalesce(sum(xact_commit), 0) FROM pg_stat_database"
            "        WHERE datname = coalesce(%s, current_database())),"
            "       pg_snapshot_xmax(pg_current_snapshot())::text::bigint,"
            "       pg_current_wal_lsn() - '0/0'::pg_lsn", [datname]).fetchone()
    assert row is not None
    return {"xact_commit": int(row[0]), "next_xid": int(row[1]), "wal_bytes": int(row[2])}


def other_backends(url: str) -> int:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                           " AND backend_type = 'client backend' AND pid <> pg_backend_pid()").fetchone()
    return int(row[0]) if row else 0


def wait_backends_gone(url: str, baseline: int, timeout: float = 15) -> None:
    """PostgreSQL reports a backend's statistics for certain only when it exits: wait for that."""
    deadline = time.monotonic() + timeout
    while other_backends(url) > baseline and time.monotonic() < deadline:
        time.sleep(0.05)


def server_version(url: str) -> str:
    with psycopg.connect(url, autocommit=True) as conn:
        row = conn.execute("SHOW server_version").fetchone()
    return str(row[0]) if row else "?"


def drop_schema(url: str, schema: str) -> None:
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# -- our workers --------------------------------------------------------------------------------------


class Workers:
    """``durable worker`` subprocesses serving ``default=concurrency`` on the benchmark's schema."""

    def __init__(self, url: str, schema: str, count: int, concurrency: int, log_dir: Path,
                 log_level: str, tag: str) -> None:
        env = {**os.environ, "DURABLE_DATABASE_URL": url, "DURABLE_SCHEMA": schema,
               "DURABLE_LOG_LEVEL": log_level,
               "PYTHONPATH": os.pathsep.join([str(REPO_ROOT), *filter(None, [os.environ.get("PYTHONPATH")])])}
        env.pop("DURABLE_METRICS_PORT", None)
        self.logs: list[Path] = []
        self.procs: list[subprocess.Popen[bytes]] = []
        for i in range(count):
            path = log_dir / f"worker-{tag}-{i}.log"
            self.logs.append(path)
            with path.open("wb") as out:
                self.procs.append(subprocess.Popen(
                    [sys.executable, "-m", "durable.cli", "worker", "--app", APP_MODULE,
                     "--queue", f"default={concurrency}"],
                    cwd=REPO_ROOT, env=env, stdout=out, stderr=subprocess.STDOUT))

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in self.procs]

    def check_alive(self) -> None:
        for proc, path in zip(self.procs, self.logs, strict=True):
            if proc.poll() is not None:
                tail = path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"worker {proc.pid} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def wait_ready(url: str, schema: str, workers: Workers, timeout: float = 60) -> None:
    """Until the workflows are registered (each worker does it on start) and every worker listens
    for tasks (best effort: the channel name is the engine's business, so give up on that part
    after a few seconds)."""
    query = sql.SQL("SELECT count(DISTINCT name) FROM {}.workflows WHERE name = ANY(%s)").format(
        sql.Identifier(schema))
    listening = ("SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                 " AND query IN ('LISTEN durable_tasks', 'LISTEN durable_push')")
    deadline = time.monotonic() + timeout
    with psycopg.connect(url, autocommit=True) as conn:
        while True:
            row = conn.execute(query, [list(WORKFLOWS)]).fetchone()
            if row and row[0] == len(WORKFLOWS):
                break
            workers.check_alive()
            if time.monotonic() > deadline:
                raise TimeoutError(f"the workers did not register {WORKFLOWS} within {timeout}s")
            time.sleep(0.05)
        listen_deadline = time.monotonic() + 5
        while time.monotonic() < listen_deadline:
            row = conn.execute(listening).fetchone()
            if row and row[0] >= len(workers.procs):
                return
            workers.check_alive()
            time.sleep(0.05)
        log("could not see every worker listening; going on")


@contextlib.contextmanager
def engine(url: str, schema: str, args: argparse.Namespace, log_dir: Path, tag: str) -> Iterator[Client]:
    """A client in this process and worker processes, both closed on exit."""
    # The client migrates the schema first, so the workers start on an existing one.
    client = Client(url, schema=schema, pool_size=args.concurrency + 4)
    workers: Workers | None = None
    try:
        workers = Workers(url, schema, args.workers, args.concurrency, log_dir, args.worker_log_level, tag)
        log(f"worker pids {workers.pids}")
        wait_ready(url, schema, workers)
        yield client
        workers.check_alive()
    finally:
        client.close()
        if workers is not None:
            workers.stop()


# -- the measurements ---------------------------------------------------------------------------------


def run_three_steps(client: Client, n: int) -> None:
    run_id = client.start(THREE_STEPS, {"n": n})
    run = client.wait(run_id, timeout=120)
    if run.status != "succeeded" or not isinstance(run.result, dict) or run.result.get("n") != n + 3:
        raise RuntimeError(f"run {run_id} ended {run.status} with {run.result!r} / {run.error!r}, "
                           f"expected n={n + 3}")


def measure_throughput(client: Client, url: str, workflows: int, concurrency: int) -> dict[str, float]:
    """Warm-up, then ``workflows`` runs from ``concurrency`` threads; also the write transactions
    (xids) and WAL bytes per workflow, exact because nothing else writes meanwhile."""
    one = functools.partial(run_three_steps, client)
    closed_loop(one, warmup_runs(concurrency), concurrency)
    before = db_counters(url)
    started = time.perf_counter()
    closed_loop(one, workflows, concurrency)
    elapsed = time.perf_counter() - started
    after = db_counters(url)
    return {"throughput_wps": workflows / elapsed, "throughput_seconds": elapsed,
            "write_xacts_per_workflow": (after["next_xid"] - before["next_xid"]) / workflows,
            "wal_bytes_per_workflow": (after["wal_bytes"] - before["wal_bytes"]) / workflows}


def warmup_runs(concurrency: int) -> int:
    return max(WARMUP_RUNS, concurrency)  # as bench/dbos_peer.py


def combine_rounds(rounds: list[dict[str, float]]) -> dict[str, Any]:
    """One peer's throughput rounds as one figure: the median, with every round's kept beside it;
    the per-workflow counts (ours only), averaged."""
    out: dict[str, Any] = {"throughput_wps": statistics.median(r["throughput_wps"] for r in rounds),
                           "throughput_wps_rounds": [r["throughput_wps"] for r in rounds]}
    for key in ("write_xacts_per_workflow", "wal_bytes_per_workflow"):
        if all(key in r for r in rounds):
            out[key] = statistics.fmean(r[key] for r in rounds)
    return out


def round_ratios(ours: dict[str, Any], dbos: dict[str, Any] | None) -> list[float]:
    """Each round's throughput ratio, ours over DBOS's round that ran right after it."""
    if dbos is None:
        return []
    return [a / b for a, b in zip(ours["throughput_wps_rounds"], dbos["throughput_wps_rounds"], strict=True)]


def measure_sequential(client: Client, runs: int) -> list[float]:
    samples: list[float] = []
    for i in range(runs):
        t0 = time.perf_counter()
        run_three_steps(client, i)
        samples.append(time.perf_counter() - t0)
    return samples


def wait_status(client: Client, run_id: str, status: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        run = client.get(run_id)
        if run.status == status:
            return
        if run.finished or time.monotonic() > deadline:
            raise RuntimeError(f"run {run_id} is {run.status}, expected {status}")
        time.sleep(0.002)


def measure_event(client: Client, runs: int) -> list[float]:
    """send_event → the step after the wait runs again (its own time.time(), same machine)."""
    samples: list[float] = []
    for i in range(runs):
        run_id = client.start(EVENT_WF, {"i": i})
        wait_status(client, run_id, "waiting")
        t0 = time.time()
        client.send_event(run_id, "go", {"i": i})
        run = client.wait(run_id, timeout=30)
        if run.status != "succeeded":
            raise RuntimeError(f"event run {run_id} ended {run.status}: {run.error!r}")
        samples.append(float(run.result["woke_at"]) - t0)
    return samples


def measure_timer(client: Client, runs: int) -> list[float]:
    """How late each 200 ms sleep fires, one run at a time: the resumed step's time.time() minus
    the wait's recorded ``until``."""
    samples: list[float] = []
    for i in range(runs):
        run_id = client.start(TIMER_WF, {"ms": TIMER_MS, "i": i})
        run = client.wait(run_id, timeout=30)
        if run.status != "succeeded" or not run.waits or run.waits[0].until is None:
            raise RuntimeError(f"timer run {run_id} ended {run.status}: {run.error!r}")
        samples.append(float(run.result["fired_at"]) - run.waits[0].until.timestamp())
    return samples


def run_dbos(url: str, workflows: int, concurrency: int, sequential: int, log_dir: Path) -> dict[str, float]:
    path = log_dir / "dbos.log"
    with path.open("wb") as err:
        proc = subprocess.run(
            [sys.executable, "-m", "bench.dbos_peer", "--database-url", url,
             "--workflows", str(workflows), "--concurrency", str(concurrency), "--sequential", str(sequential)],
            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=err, timeout=900, check=False)
    lines = proc.stdout.decode(errors="replace").strip().splitlines()
    if proc.returncode != 0 or not lines:
        tail = path.read_text(errors="replace")[-3000:]
        raise RuntimeError(f"the DBOS peer exited with {proc.returncode}:\n{tail}")
    return {k: float(v) for k, v in json.loads(lines[-1]).items()}


# -- reporting ----------------------------------------------------------------------------------------


def ratio(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None or b == 0 else a / b


def fmt(value: float | None, digits: int = 1) -> str:
    return "—" if value is None else f"{value:,.{digits}f}"


def print_report(res: dict[str, Any]) -> None:
    ours, dbos = res["durable"], res.get("dbos")
    d: dict[str, float] = dbos or {}
    cfg = res["config"]
    print()
    print(f"Durable vs DBOS Transact — PostgreSQL {res['postgres']}, {cfg['cpus']} CPUs, "
          f"{cfg['workers']} worker process(es), queue default={cfg['concurrency']}, "
          f"{cfg['concurrency']} client threads")
    print(f"{'':38}{'Durable':>12}{'DBOS':>12}  ratio")
    rounds = len(ours["throughput_wps_rounds"])
    rows = [
        (f"(a) throughput, wf/s, median of {rounds}", ours["throughput_wps"], d.get("throughput_wps"),
         res["ratios"]["throughput_ours_over_dbos"], "ours/DBOS (median)"),
        ("(b) sequential latency p50, ms", ours["latency_p50_ms"], d.get("latency_p50_ms"),
         ratio(d.get("latency_p50_ms"), ours["latency_p50_ms"]), "DBOS/ours"),
        ("(b) sequential latency p95, ms", ours["latency_p95_ms"], d.get("latency_p95_ms"),
         ratio(d.get("latency_p95_ms"), ours["latency_p95_ms"]), "DBOS/ours"),
        ("(b) sequential latency mean, ms", ours["latency_mean_ms"], d.get("latency_mean_ms"),
         ratio(d.get("latency_mean_ms"), ours["latency_mean_ms"]), "DBOS/ours"),
    ]
    theirs = d.get("throughput_wps_rounds") or [None] * rounds
    each = res["ratios"]["throughput_rounds_ours_over_dbos"] or [None] * rounds
    rows[1:1] = [(f"    round {k}", a, b, r, "ours/DBOS")
                 for k, (a, b, r) in enumerate(zip(ours["throughput_wps_rounds"], theirs, each, strict=True), 1)]
    for label, a, b, r, how in rows:
        shown = "—" if r is None else f"{r:.2f}x {how}"
        print(f"{label:38}{fmt(a):>12}{fmt(b):>12}  {shown}")
    print(f"{'(a) committed xacts / workflow':38}{fmt(ours['xact_commits_per_workflow'], 2):>12}"
          f"{fmt(d.get('xact_commits_per_workflow'), 2):>12}  (all transactions, reads included)")
    print(f"{'(a) write xacts (xids) / workflow':38}{fmt(ours['write_xacts_per_workflow'], 2):>12}")
    print(f"{'(a) WAL bytes / workflow':38}{fmt(ours['wal_bytes_per_workflow'], 0):>12}")
    ev, tm = ours["event_wakeup"], ours["timer_late"]
    print(f"{'(c) event wake-up p50 / p95, ms':38}{fmt(ev['p50_ms']):>12}{fmt(ev['p95_ms']):>12}"
          f"   (n={int(ev['n'])}, max {fmt(ev['max_ms'])})")
    print(f"{'(d) 200 ms timer late p50 / p95, ms':38}{fmt(tm['p50_ms']):>12}{fmt(tm['p95_ms']):>12}"
          f"   (n={int(tm['n'])}, max {fmt(tm['max_ms'])}, min {fmt(tm['min_ms'])})")
    if dbos is None:
        print("(DBOS skipped)")
    load = max(cfg["loadavg_1m_start"], cfg["loadavg_1m_end"])
    if load > 0.5 * (cfg["cpus"] or 1):
        print(f"note: the machine was busy (1-minute load up to {load:.1f} on {cfg['cpus']} CPUs); "
              "figures are noisy, compare runs made under the same load")
    print(flush=True)


# -- main ---------------------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.bench_engine", description=__doc__.splitlines()[0])
    p.add_argument("--workflows", type=int, default=5000,
                   help="runs in the throughput phase (a), for each peer: at least a few seconds of each")
    p.add_argument("--rounds", type=int, default=5,
                   help="throughput rounds (a), ours then DBOS's in each; the median is reported")
    p.add_argument("--concurrency", type=int, default=8, help="client threads, and each worker's slots")
    p.add_argument("--sequential", type=int, default=300, help="runs in the sequential latency phase (b)")
    p.add_argument("--events", type=int, default=50, help="runs in the event wake-up phase (c)")
    p.add_argument("--timers", type=int, default=30, help="runs in the timer phase (d)")
    p.add_argument("--workers", type=int, default=1, help="worker processes")
    p.add_argument("--skip-dbos", action="store_true", help="do not run DBOS Transact (e)")
    p.add_argument("--database-url", default=os.environ.get("DURABLE_DATABASE_URL") or None,
                   help="PostgreSQL URL (default: DURABLE_DATABASE_URL, else an embedded server)")
    p.add_argument("--worker-log-level", default="WARNING",
                   help="DURABLE_LOG_LEVEL of the workers (the DBOS peer logs at WARNING)")
    p.add_argument("--keep-logs", action="store_true", help="keep the worker and DBOS logs (path printed)")
    args = p.parse_args(argv)
    for name in ("workflows", "rounds", "concurrency", "sequential", "workers"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.sequential < 2 or args.events < 2 or args.timers < 2:
        p.error("--sequential, --events and --timers need at least 2 runs for percentiles")
    return args


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    log_dir = Path(tempfile.mkdtemp(prefix="durable-bench-logs-"))
    schema = f"bench_{secrets.token_hex(4)}"
    ours: dict[str, Any] = {}
    dbos: dict[str, float] | None = None
    t_total = time.perf_counter()
    load_start = os.getloadavg()[0]
    with database(args.database_url) as url:
        version = server_version(url)
        log(f"schema {schema}; logs in {log_dir}")
        try:
            # (a) on its own client and workers, closed after each round: a backend's transaction
            # counts reach pg_stat_database for certain only when it exits. The count includes the
            # workers' start-up (migrations, registration: a few dozen) and the warm-up runs.
            rounds: list[dict[str, Any]] = []
            our_xacts = dbos_xacts = 0
            for r in range(1, args.rounds + 1):
                baseline = other_backends(url)
                xact0 = db_counters(url)["xact_commit"]
                with engine(url, schema, args, log_dir, f"a{r}") as client:
                    log(f"(a) round {r}/{args.rounds}: {args.workflows} runs, {args.concurrency} client threads")
                    mine = measure_throughput(client, url, args.workflows, args.concurrency)
                wait_backends_gone(url, baseline)
                our_xacts += db_counters(url)["xact_commit"] - xact0
                theirs = None
                if not args.skip_dbos:
                    log(f"(e) round {r}/{args.rounds}: DBOS Transact peer (subprocess)")
                    dbos_xact0 = db_counters(url, DBOS_DATABASE)["xact_commit"]
                    # DBOS's sequential latency (b) in the first round only, as ours is measured once.
                    theirs = run_dbos(url, args.workflows, args.concurrency, args.sequential if r == 1 else 0, log_dir)
                    # DBOS's process has exited, so its counts are complete; they cover its launch,
                    # warm-up, throughput and sequential runs.
                    dbos_xacts += db_counters(url, DBOS_DATABASE)["xact_commit"] - dbos_xact0
                rounds.append({"durable": mine, "dbos": theirs})
            counted = args.rounds * (args.workflows + warmup_runs(args.concurrency))
            ours.update(combine_rounds([x["durable"] for x in rounds]))
            ours["xact_commits_per_workflow"] = our_xacts / counted
            if not args.skip_dbos:
                dbos_rounds: list[dict[str, float]] = [x["dbos"] for x in rounds]
                dbos = {**dbos_rounds[0], **combine_rounds(dbos_rounds)}
                dbos["xact_commits_per_workflow"] = dbos_xacts / (counted + args.sequential)

            with engine(url, schema, args, log_dir, "bcd") as client:
                log(f"(b) sequential latency: {args.sequential} runs after {WARMUP_RUNS} warm-up runs")
                measure_sequential(client, WARMUP_RUNS)
                seq = measure_sequential(client, args.sequential)
                ours.update({"latency_p50_ms": pct_ms(seq, 50), "latency_p95_ms": pct_ms(seq, 95),
                             "latency_mean_ms": statistics.fmean(seq) * 1000})
                log(f"(c) event wake-up: {args.events} runs")
                ours["event_wakeup"] = summary_ms(measure_event(client, args.events))
                log(f"(d) timer precision: {args.timers} runs of a {TIMER_MS} ms sleep")
                ours["timer_late"] = summary_ms(measure_timer(client, args.timers))
        finally:
            with contextlib.suppress(psycopg.Error):
                drop_schema(url, schema)
    if not args.keep_logs:
        shutil.rmtree(log_dir, ignore_errors=True)
    ratios = round_ratios(ours, dbos)
    res: dict[str, Any] = {
        "config": {"workflows": args.workflows, "rounds": args.rounds, "concurrency": args.concurrency,
                   "sequential": args.sequential,
                   "events": args.events, "timers": args.timers, "workers": args.workers,
                   "cpus": os.cpu_count(), "embedded_postgres": args.database_url is None,
                   # Other processes on the machine skew every figure; the 1-minute load says how busy it was.
                   "loadavg_1m_start": load_start, "loadavg_1m_end": os.getloadavg()[0]},
        "postgres": version,
        "durable": ours,
        "dbos": dbos,
        "ratios": {
            # The median of the rounds' ratios, not the ratio of the medians: each round's pair ran
            # back to back, under the same conditions.
            "throughput_ours_over_dbos": statistics.median(ratios) if ratios else None,
            "throughput_rounds_ours_over_dbos": ratios,
            "latency_p50_dbos_over_ours": ratio((dbos or {}).get("latency_p50_ms"), ours["latency_p50_ms"]),
            "latency_p95_dbos_over_ours": ratio((dbos or {}).get("latency_p95_ms"), ours["latency_p95_ms"]),
        },
        "total_seconds": time.perf_counter() - t_total,
    }
    print_report(res)
    print(json.dumps(res), flush=True)
    return res


if __name__ == "__main__":
    main()
