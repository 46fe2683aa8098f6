"""Throughput and latency of the whole path: manager -> relay -> JetStream -> workers -> relay -> manager.

Starts the embedded stack (a real nats-server, manager, relay and workers as separate processes, the
site database at synchronous=FULL) in a temporary site and measures:

- no-op ``call`` jobs: jobs/s end to end, p50/p99 dispatch-to-start and finish-to-commit;
- ``true`` subprocess jobs: jobs/s, against the rate at which plain asyncio starts ``true`` here;
- a chain of sequential jobs: per-hop latency (one job's end to the next one's start);
- a fan-out/fan-in: one root, N parallel jobs, one join: wall time.

Run: ``python bench/throughput.py`` (``--help`` for sizes). Prints a summary table.
"""

import argparse
import asyncio
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from ekiden.client import ApiClient
from ekiden.up import Stack, StackPlan
from runtime.bus import subscribe
from schemas import subjects
from schemas.codec import decode

DEST = "bench"
NOOP = "examples.jobs:noop"
FINAL = {"succeeded", "failed", "timed_out", "killed", "skipped", "lost"}


def jobnet(name: str, jobs: list[dict[str, Any]]) -> dict[str, Any]:
    return {name: {"job": jobs}}


def definitions(calls_per_run: int, procs_per_run: int, chain: int, fan: int) -> dict[str, Any]:
    nets: dict[str, Any] = {}
    nets |= jobnet("calls", [{"id": f"c{i}", "call": NOOP, "dest": DEST} for i in range(calls_per_run)])
    nets |= jobnet("procs", [{"id": f"p{i}", "cmd": ["true"], "dest": DEST} for i in range(procs_per_run)])
    chain_jobs: list[dict[str, Any]] = [{"id": "s0", "call": NOOP, "dest": DEST}]
    chain_jobs += [{"id": f"s{i}", "call": NOOP, "dest": DEST, "after": [f"s{i - 1}"]} for i in range(1, chain)]
    nets |= jobnet("chain", chain_jobs)
    fan_jobs: list[dict[str, Any]] = [{"id": "root", "call": NOOP, "dest": DEST}]
    fan_jobs += [{"id": f"f{i}", "call": NOOP, "dest": DEST, "after": ["root"]} for i in range(fan)]
    fan_jobs.append({"id": "join", "call": NOOP, "dest": DEST, "after": [f"f{i}" for i in range(fan)]})
    nets |= jobnet("fan", fan_jobs)
    return {"destination": {DEST: {"relay": "main"}}, "jobnet": nets}


async def asyncio_true_rate(count: int, concurrency: int) -> float:
    """Jobs/s at which plain asyncio starts and reaps ``true``, ``concurrency`` at a time."""
    slots = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with slots:
            proc = await asyncio.create_subprocess_exec(
                "true", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True
            )
            await proc.communicate()

    t0 = time.perf_counter()
    async with asyncio.TaskGroup() as tg:
        for _ in range(count):
            tg.create_task(one())
    return count / (time.perf_counter() - t0)


class Commits:
    """Arrival time of each job's final state on the progress feed (published right after commit)."""

    def __init__(self) -> None:
        self.arrived: dict[tuple[str, str], float] = {}

    async def watch(self, client: ApiClient) -> None:
        sub = await subscribe(client.nc, subjects.all_run_updates(client.server_id))
        async for msg in sub.messages:
            now = time.time()
            for env in decode(msg.data):
                for job in env.payload.get("jobs", []):
                    if job["state"] in FINAL:
                        self.arrived.setdefault((env.run_id, job["id"]), now)


async def run_all(client: ApiClient, name: str, runs: int) -> list[str]:
    ids = [(await client.call("run", jobnet=name))["run"] for _ in range(runs)]
    pending = set(ids)
    while pending:
        await asyncio.sleep(0.05)
        for row in await client.call("runs", jobnet=name, limit=min(1000, runs + 10)):
            if row["run"] in pending and row["state"] != "running":
                if row["state"] != "succeeded":
                    raise SystemExit(f"run {row['run']} of {name} {row['state']}")
                pending.discard(row["run"])
    return ids


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def rows(db: Path, sql: str, params: tuple[Any, ...]) -> list[tuple[Any, ...]]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as con:
        return con.execute(sql, params).fetchall()


def span(db: Path, ids: list[str]) -> float:
    marks = ",".join("?" * len(ids))
    ((start, end),) = rows(db, f"SELECT MIN(created_at), MAX(ended_at) FROM runs WHERE run_id IN ({marks})", tuple(ids))
    return float(end - start)


def attempt_latencies(db: Path, ids: list[str], commits: Commits) -> tuple[list[float], list[float]]:
    marks = ",".join("?" * len(ids))
    got = rows(
        db,
        f"SELECT run_id, job_id, dispatched_at, started_at, reported_at FROM attempts WHERE run_id IN ({marks})",
        tuple(int(i) for i in ids),
    )
    to_start = [s - d for _, _, d, s, _ in got if s is not None]
    to_commit = [commits.arrived[(str(r), j)] - e for r, j, _, _, e in got if (str(r), j) in commits.arrived and e]
    return to_start, to_commit


def chain_hops(db: Path, run_id: str, length: int) -> list[float]:
    got = dict(
        (
            (j, (s, e))
            for j, s, e in rows(
                db, "SELECT job_id, started_at, reported_at FROM attempts WHERE run_id=?", (int(run_id),)
            )
        )
    )
    return [got[f"s{i}"][0] - got[f"s{i - 1}"][1] for i in range(1, length)]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


async def main(a: argparse.Namespace) -> None:
    slots = a.workers * a.concurrency
    print(f"asyncio baseline: starting {a.procs} 'true' processes, {slots} at a time ...", flush=True)
    baseline = await asyncio_true_rate(a.procs, slots)
    with tempfile.TemporaryDirectory(prefix="ekiden-bench-") as tmp:
        stack = Stack(Path(tmp) / "site", secure=not a.insecure)
        plan = StackPlan(
            relays=("main",),
            destinations=(DEST,),
            agents=(),
            workers_per_destination=a.workers,
            worker_concurrency=a.concurrency,
        )
        await stack.start(plan)
        db = stack.site / "site.db"
        client = await ApiClient.connect(stack.endpoint, timeout_s=60)
        commits = Commits()
        try:
            async with asyncio.TaskGroup() as tg:
                watcher = tg.create_task(commits.watch(client))
                await client.call("apply", definitions=definitions(a.calls // a.runs, a.procs // 2, a.chain, a.fan))
                print("warming up ...", flush=True)
                await run_all(client, "chain", 1)
                print(f"{a.calls} call jobs in {a.runs} concurrent runs ...", flush=True)
                call_ids = await run_all(client, "calls", a.runs)
                print(f"{a.procs} 'true' jobs in 2 concurrent runs ...", flush=True)
                proc_ids = await run_all(client, "procs", 2)
                print(f"chain of {a.chain} ...", flush=True)
                chain_id = (await run_all(client, "chain", 1))[0]
                print(f"fan-out/fan-in of {a.fan} ...", flush=True)
                fan_id = (await run_all(client, "fan", 1))[0]
                await asyncio.sleep(0.5)
                watcher.cancel()
            manager_pid = next(p.pid for n, _, p in stack.procs if n == "manager")
            manager_rss = rss_mb(manager_pid)
        finally:
            await client.close()
            await stack.stop()
        call_s = span(db, call_ids)
        proc_s = span(db, proc_ids)
        to_start, to_commit = attempt_latencies(db, call_ids, commits)
        hops = chain_hops(db, chain_id, a.chain)
        fan_s = span(db, [fan_id])
    proc_rate = a.procs / proc_s
    print()
    print(f"Ekiden throughput ({a.workers} workers x {a.concurrency} slots, 1 relay, SQLite synchronous=FULL)")
    print(f"  call jobs           {a.calls:>7}  {a.calls / call_s:9.0f} jobs/s   ({call_s:.2f}s)")
    print(f"  dispatch->start     p50 {pct(to_start, 0.5) * 1000:7.2f} ms   p99 {pct(to_start, 0.99) * 1000:8.2f} ms")
    print(f"  finish->commit      p50 {pct(to_commit, 0.5) * 1000:7.2f} ms   p99 {pct(to_commit, 0.99) * 1000:8.2f} ms")
    print(f"  'true' jobs         {a.procs:>7}  {proc_rate:9.0f} jobs/s   ({proc_s:.2f}s)")
    print(f"  asyncio 'true'      {a.procs:>7}  {baseline:9.0f} jobs/s   (Ekiden at {100 * proc_rate / baseline:.0f}%)")
    print(
        f"  chain of {a.chain:<5}     hop p50 {statistics.median(hops) * 1000:6.2f} ms"
        f"   p99 {pct(hops, 0.99) * 1000:7.2f} ms"
    )
    print(f"  fan-out/fan-in      {a.fan:>7}  {fan_s:9.3f} s")
    print(f"  manager peak RSS    {manager_rss:9.1f} MiB")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=10_000)
    p.add_argument("--runs", type=int, default=10, help="concurrent runs the call jobs are split into")
    p.add_argument("--procs", type=int, default=2_000)
    p.add_argument("--chain", type=int, default=200)
    p.add_argument("--fan", type=int, default=1_000)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--insecure", action="store_true", help="NATS without credentials (to compare)")
    args = p.parse_args()
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    import uvloop

    uvloop.run(main(args))
