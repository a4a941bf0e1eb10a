"""``make demo``: the main job end to end on the embedded PostgreSQL.

Starts a real ``durable worker`` process for the order example, starts a run, prints each step as
it is checkpointed, and the result.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

from rich.console import Console

from durable import Client

console = Console()


def main() -> int:
    with console.status("starting the embedded PostgreSQL…"):
        client = Client()  # DURABLE_DATABASE_URL, or the embedded server under .durable/
    env = {**os.environ, "DURABLE_DATABASE_URL": client.url, "DURABLE_LOG_LEVEL": "WARNING"}
    worker = subprocess.Popen([sys.executable, "-m", "durable.cli", "worker", "--app", "examples.order_processing"],
                              env=env)
    try:
        with console.status("waiting for the worker to register its workflows…"):
            while True:
                try:
                    run_id = client.start("process_order", {"id": "order_123", "customer_id": "ada",
                                                            "items": [{"price": 25}, {"price": 17.5}]})
                    break
                except Exception:
                    if worker.poll() is not None:
                        console.print("[red]the worker exited[/]")
                        return 1
                    time.sleep(0.2)
        console.print(f"started run [bold]{run_id}[/] of process_order")
        seen = 0
        while True:
            run = client.get(run_id)
            for step in run.steps[seen:]:
                console.print(f"  [green]✓[/] {step.name:<18} attempt {step.attempt}  {step.status}")
            seen = len(run.steps)
            if run.finished:
                break
            time.sleep(0.05)
        console.print(f"run {run.status} ({run.progress}); result: {run.result}")
        return 0 if run.status == "succeeded" else 1
    finally:
        worker.terminate()
        worker.wait(10)
        client.close()


if __name__ == "__main__":
    sys.exit(main())
