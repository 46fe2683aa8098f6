"""Scaling of one destination: jobs/s with 1, 2, 4 and 8 workers pulling from the same JetStream queue.

For each point it starts the embedded stack (a real nats-server, manager, relay and N workers as separate
processes, the site database at synchronous=FULL) in a temporary site, warms it up, runs the same number
of no-op ``call`` jobs split over a few concurrent runs, and takes jobs/s from the site database (first
run created to last run ended). ``--sleep-ms`` makes every job sleep instead, to see how the pool scales
when the jobs, not the scheduler, are the bottleneck.

Run from the repository root: ``python -m bench.scaling`` (``--help`` for sizes). Prints a table.
"""

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from bench.throughput import DEST, NOOP, jobnet, run_all, span
from ekiden.client import ApiClient
from ekiden.up import Stack, StackPlan


def definitions(jobs_per_run: int, sleep_ms: int) -> dict[str, Any]:
    """One jobnet of independent jobs on the bench destination, and a short one to warm up with."""
    if sleep_ms:
        job: dict[str, Any] = {"call": "asyncio:sleep", "args": {"delay": sleep_ms / 1000}, "dest": DEST}
    else:
        job = {"call": NOOP, "dest": DEST}
    nets = jobnet("load", [{"id": f"j{i}", **job} for i in range(jobs_per_run)])
    nets |= jobnet("warm", [{"id": f"w{i}", "call": NOOP, "dest": DEST} for i in range(50)])
    return {"destination": {DEST: {"relay": "main"}}, "jobnet": nets}


async def point(workers: int, a: argparse.Namespace) -> tuple[float, float]:
    """Jobs/s and seconds for one number of workers."""
    with tempfile.TemporaryDirectory(prefix="ekiden-scaling-") as tmp:
        stack = Stack(Path(tmp) / "site")
        plan = StackPlan(
            relays=("main",),
            destinations=(DEST,),
            agents=(),
            workers_per_destination=workers,
            worker_concurrency=a.concurrency,
        )
        await stack.start(plan)
        db = stack.site / "site.db"
        client = await ApiClient.connect(stack.endpoint, timeout_s=60)
        try:
            await client.call("apply", definitions=definitions(a.jobs // a.runs, a.sleep_ms))
            await run_all(client, "warm", 2)
            ids = await run_all(client, "load", a.runs)
        finally:
            await client.close()
            await stack.stop()
        seconds = span(db, ids)
    return (a.jobs // a.runs) * a.runs / seconds, seconds


async def main(a: argparse.Namespace) -> None:
    kind = f"asyncio.sleep({a.sleep_ms} ms)" if a.sleep_ms else "no-op"
    load_before = os.getloadavg()[0]
    rows: list[tuple[int, float, float]] = []
    for workers in a.workers:
        print(f"{workers} worker(s) x {a.concurrency} slots: {a.jobs} {kind} call jobs ...", flush=True)
        started = time.monotonic()
        rate, seconds = await point(workers, a)
        rows.append((workers, rate, seconds))
        print(f"  {rate:.0f} jobs/s (point took {time.monotonic() - started:.0f}s)", flush=True)
    base = rows[0][1]
    print()
    print(f"Ekiden scaling: one destination, {a.jobs} {kind} call jobs in {a.runs} concurrent runs per point,")
    print(f"1 relay, workers x {a.concurrency} slots, SQLite synchronous=FULL, {os.cpu_count()} CPUs")
    # Every process shares these CPUs: other load skews the figures, so say how much there was.
    print(f"load average (1 min) {load_before:.1f} before, {os.getloadavg()[0]:.1f} after")
    print(f"  {'workers':>7}  {'jobs/s':>8}  {'seconds':>8}  {'vs 1 worker':>11}")
    for workers, rate, seconds in rows:
        print(f"  {workers:>7}  {rate:>8.0f}  {seconds:>8.2f}  {rate / base:>10.2f}x")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--jobs", type=int, default=3000, help="jobs per point")
    p.add_argument("--runs", type=int, default=10, help="concurrent runs the jobs are split into")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4, 8], help="worker counts to measure")
    p.add_argument("--concurrency", type=int, default=8, help="slots per worker")
    p.add_argument("--sleep-ms", type=int, default=0, help="each job sleeps this long (0: no-op jobs)")
    args = p.parse_args()
    import uvloop

    uvloop.run(main(args))
