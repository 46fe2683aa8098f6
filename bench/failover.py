"""Takeover time of an active-standby manager pair: SIGKILL of the active manager to the new one's first dispatch.

Starts the embedded stack with two managers on one site (``ekiden.up.Stack``: a real nats-server, the
manager pair, a relay and workers as separate processes, the site database at synchronous=FULL), then
``--kills`` times: starts a run of parallel job chains, waits until a random share of its jobs has
succeeded, kills the active manager with SIGKILL, and reads from the site database when the standby took
the lease (its first commit) and when it first dispatched a job. A new standby is started after each
takeover, and every run must still succeed.

Run: ``python bench/failover.py`` (``--help`` for sizes). Prints a table and the median and worst.
"""

import argparse
import asyncio
import random
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekiden.client import ApiClient
from ekiden.render import table
from ekiden.up import Stack, StackPlan
from engine.sitefile import open_read_only

DEST = "bench"


@dataclass(frozen=True)
class Kill:
    n: int
    after_jobs: int
    epoch: int
    lease_taken_s: float
    first_dispatch_s: float


def jobnet(chains: int, length: int, delay_s: float) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = []
    for c in range(chains):
        for i in range(length):
            job: dict[str, Any] = {"id": f"c{c}-{i}", "cmd": ["sleep", f"{delay_s:g}"], "dest": DEST}
            if i:
                job["after"] = [f"c{c}-{i - 1}"]
            jobs.append(job)
    return {"destination": {DEST: {"relay": "main"}}, "jobnet": {"chains": {"job": jobs}}}


def count(site: Path, sql: str, params: tuple[Any, ...]) -> Any:
    with open_read_only(site) as db:
        return db.execute(sql, params).fetchone()[0]


async def wait_for(site: Path, sql: str, params: tuple[Any, ...], ready: Any, timeout_s: float) -> Any:
    deadline = time.monotonic() + timeout_s
    while not ready(value := await asyncio.to_thread(count, site, sql, params)):
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out after {timeout_s:g}s waiting on: {sql} {params}")
        await asyncio.sleep(0.01)
    return value


async def one_kill(stack: Stack, client: ApiClient, n: int, a: argparse.Namespace, rng: random.Random) -> Kill:
    await stack.wait_for_standbys(1, 60)
    run = (await client.call("run", jobnet="chains"))["run"]
    total = a.chains * a.length
    after_jobs = rng.randint(total // 10, total // 2)
    succeeded = "SELECT COUNT(*) FROM jobs WHERE run_id=? AND state='succeeded'"
    await wait_for(stack.site, succeeded, (int(run),), lambda v: v >= after_jobs, 120)
    killed = await stack.signal_active(signal.SIGKILL)
    lease = await stack.wait_for_takeover(killed.epoch, 120)
    first = await stack.wait_for_dispatch_after(lease["acquired_at"], 60)
    if first is None:
        raise SystemExit(f"kill {n}: the new active manager dispatched nothing within 60s")
    await stack.add_manager()
    state = "SELECT state FROM runs WHERE run_id=?"
    ended = await wait_for(stack.site, state, (int(run),), lambda v: v != "running", 300)
    if ended != "succeeded":
        raise SystemExit(f"run {run} {ended} after kill {n}")
    return Kill(n, after_jobs, lease["epoch"], lease["acquired_at"] - killed.at, first - killed.at)


async def main(a: argparse.Namespace) -> None:
    rng = random.Random(a.seed)
    kills: list[Kill] = []
    with tempfile.TemporaryDirectory(prefix="ekiden-failover-") as tmp:
        stack = Stack(Path(tmp) / "site")
        plan = StackPlan(
            relays=("main",),
            destinations=(DEST,),
            agents=(),
            workers_per_destination=a.workers,
            worker_concurrency=a.concurrency,
            managers=2,
            lease_s=a.lease_s,
        )
        print(f"starting the stack with a manager pair (lease {a.lease_s:g}s) ...", flush=True)
        await stack.start(plan)
        client = await ApiClient.connect(stack.endpoint, timeout_s=30)
        try:
            await client.call("apply", definitions=jobnet(a.chains, a.length, a.delay_s))
            for n in range(1, a.kills + 1):
                kill = await one_kill(stack, client, n, a, rng)
                kills.append(kill)
                print(
                    f"kill {n:>2}: after {kill.after_jobs:>3} jobs, lease taken in {kill.lease_taken_s:5.2f}s,"
                    f" first dispatch in {kill.first_dispatch_s:5.2f}s (epoch {kill.epoch})",
                    flush=True,
                )
        finally:
            await client.close()
            await stack.stop()
    report(kills, a)


def report(kills: list[Kill], a: argparse.Namespace) -> None:
    first = [k.first_dispatch_s for k in kills]
    lease = [k.lease_taken_s for k in kills]
    print()
    print(
        f"Ekiden failover: {len(kills)} SIGKILLs of the active manager (lease {a.lease_s:g}s, standby poll 0.5s,"
        f" {a.chains}x{a.length} chained jobs per run, {a.workers} workers)"
    )
    rows = [
        [str(k.n), str(k.after_jobs), str(k.epoch), f"{k.lease_taken_s:.2f}s", f"{k.first_dispatch_s:.2f}s"]
        for k in kills
    ]
    print(table(rows, ["KILL", "AFTER JOBS", "NEW EPOCH", "LEASE TAKEN", "FIRST DISPATCH"]))
    print()
    summary = [
        ["kill -> lease taken", *(f"{f(lease):.2f}s" for f in (statistics.median, max, min))],
        ["kill -> first dispatch", *(f"{f(first):.2f}s" for f in (statistics.median, max, min))],
    ]
    print(table(summary, ["TAKEOVER", "MEDIAN", "WORST", "BEST"]))


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--kills", type=int, default=10)
    p.add_argument("--lease-s", type=float, default=6.0, help="the managers' lease (6 s is the manager's default)")
    p.add_argument("--chains", type=int, default=8)
    p.add_argument("--length", type=int, default=30)
    p.add_argument("--delay-s", type=float, default=0.1, help="seconds each job sleeps")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--seed", type=int, default=1)
    args = p.parse_args()
    if args.kills < 1:
        p.error("--kills must be at least 1")
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import uvloop

    uvloop.run(main(args))
