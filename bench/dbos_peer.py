"""DBOS Transact peer for the Durable benchmark.

Our benchmark calls this module (normally as a subprocess, ``python -m bench.dbos_peer``) to
run the same three-step workflow on DBOS Transact against the same PostgreSQL
server, so both engines' figures come from one run on one machine. A separate
process is preferred because DBOS keeps process-global state (a singleton, a
decorator registry, an unbounded executor pool and background threads) that
would otherwise share the interpreter, the GIL and the CPU with our engine.

Requires the ``dbos`` package (3.x). DBOS 3.x has no application database: only
``system_database_url`` is accepted, and ``database_url`` is rejected at launch.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

from dbos import DBOS, DBOSConfig
from sqlalchemy.engine import make_url

from bench.load import closed_loop

DBOS_DATABASE = "dbos_bench"
WARMUP_RUNS = 20


@DBOS.step()
def _step_one(x: int) -> int:
    return x + 1


@DBOS.step()
def _step_two(x: int) -> int:
    return x + 1


@DBOS.step()
def _step_three(x: int) -> int:
    return x + 1


@DBOS.workflow()
def _three_steps(x: int) -> int:
    return _step_three(_step_two(_step_one(x)))


def _dbos_url(database_url: str) -> str:
    # Same server and credentials, but a database of its own so DBOS's "dbos"
    # schema never meets our tables; DBOS creates it on launch if missing.
    url = make_url(database_url).set(database=DBOS_DATABASE)
    return url.render_as_string(hide_password=False)


def _run_once(x: int) -> int:
    # start_workflow + get_result is DBOS's "start and await" idiom: the
    # workflow runs on DBOS's executor and the handle wraps an in-process
    # future, so no result polling (unlike queues, which poll every second).
    result = DBOS.start_workflow(_three_steps, x).get_result()
    if result != x + 3:
        raise RuntimeError(f"DBOS workflow returned {result}, expected {x + 3}")
    return result


def _percentile_ms(samples: list[float], pct: int) -> float:
    # "inclusive" keeps p95 inside the observed range for small samples.
    return statistics.quantiles(samples, n=100, method="inclusive")[pct - 1] * 1000


def run_dbos_benchmark(
    database_url: str, *, workflows: int = 500, concurrency: int = 8, sequential: int = 200
) -> dict[str, float]:
    """Runs on DBOS: (a) throughput: `workflows` runs of a 3-step workflow of trivial
    steps, started `concurrency` at a time from client threads and awaited, reporting
    workflows/s; (b) latency: `sequential` runs one after another, reporting p50/p95 ms
    from start to result seen by the caller (none when `sequential` is 0)."""
    config: DBOSConfig = {
        "name": "durable-bench-dbos-peer",
        "system_database_url": _dbos_url(database_url),
        # Pool must exceed the client threads, or throughput measures pool waits.
        "sys_db_pool_size": max(20, 2 * concurrency),
        "log_level": "WARNING",
    }
    launch_start = time.perf_counter()
    DBOS(config=config)
    try:
        DBOS.launch()
        launch_s = time.perf_counter() - launch_start

        # Warm-up pays for connection setup, first-call registry lookups and
        # executor thread creation, which would otherwise skew both parts.
        closed_loop(_run_once, max(WARMUP_RUNS, concurrency), concurrency)
        started = time.perf_counter()
        closed_loop(_run_once, workflows, concurrency)
        throughput_s = time.perf_counter() - started

        samples: list[float] = []
        for i in range(sequential):
            t0 = time.perf_counter()
            _run_once(i)
            samples.append(time.perf_counter() - t0)
    finally:
        DBOS.destroy()

    figures = {
        "throughput_wps": workflows / throughput_s,
        "throughput_seconds": throughput_s,
        "launch_seconds": launch_s,
        "workflows": float(workflows),
        "concurrency": float(concurrency),
        "sequential": float(sequential),
    }
    if samples:
        figures.update({"latency_p50_ms": _percentile_ms(samples, 50),
                        "latency_p95_ms": _percentile_ms(samples, 95),
                        "latency_mean_ms": statistics.fmean(samples) * 1000})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--database-url", required=True)
    parser.add_argument("--workflows", type=int, default=500)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--sequential", type=int, default=200)
    args = parser.parse_args()
    result = run_dbos_benchmark(
        args.database_url,
        workflows=args.workflows,
        concurrency=args.concurrency,
        sequential=args.sequential,
    )
    # The caller parses the last stdout line; DBOS logs go to stderr.
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
