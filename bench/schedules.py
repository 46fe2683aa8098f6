"""Ten thousand schedules on one manager: registration, idle cost, and how late fires start.

Starts the embedded stack (a real nats-server, manager, relay and two destination workers as separate
processes; the site database at synchronous=FULL) in a temporary site, then:

1. registers ``--schedules`` schedules (applied in batches), each once a day at a time hours away, and
   measures the manager's CPU over ``--idle-s`` seconds (from /proc/<pid>/stat) and its memory: the cost of
   schedules that are registered but not due;
2. applies them again as crons that fire every ``--period-s`` seconds, spread over the seconds of the
   period (10,000 every 300 s is about 33 fires a second), lets them fire for ``--fire-s`` seconds, and
   reads every fire's lateness (when the core committed the run minus its fire time) from the site database.

Each fire starts a one-job run of a no-op ``call`` on the workers. Run: ``python bench/schedules.py``.
"""

import argparse
import asyncio
import os
import sqlite3
import tempfile
import time
from pathlib import Path
from typing import Any

from ekiden.client import ApiClient
from ekiden.up import Stack, StackPlan

DEST = "bench"
NOOP = "examples.jobs:noop"
#: Schedules per apply request (a request stays well under the message size limit).
BATCH = 1000


def proc_cpu_s(pid: int) -> float:
    """User plus system CPU seconds a process has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def proc_mem_mb(pid: int) -> tuple[float, float]:
    """Resident memory now and at its peak, in MiB."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) / 1024
    return found["VmRSS"], found["VmHWM"]


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def idle_schedules(n: int, now: float) -> dict[str, Any]:
    """Daily schedules at a time of day about six hours from now: registered, none due for hours."""
    hh = time.gmtime(now + 6 * 3600)
    return {f"s{i:05d}": {"jobnet": "tick", "at": [f"{hh.tm_hour:02d}:{(i % 60):02d}"]} for i in range(n)}


def firing_schedules(n: int, period_s: int) -> dict[str, Any]:
    """Schedule i fires every ``period_s`` seconds at offset i mod period_s (period_s a multiple of 60)."""
    minutes = period_s // 60
    out = {}
    for i in range(n):
        offset = i % period_s
        second, minute = offset % 60, offset // 60
        out[f"s{i:05d}"] = {"jobnet": "tick", "cron": f"{second} {minute}-59/{minutes} * * * *", "catch_up": "skip"}
    return out


async def apply_all(client: ApiClient, schedules: dict[str, Any]) -> float:
    """Apply schedules in batches; return the seconds it took."""
    names = sorted(schedules)
    started = time.monotonic()
    for i in range(0, len(names), BATCH):
        batch = {n: schedules[n] for n in names[i : i + BATCH]}
        await client.call("apply", definitions={"schedule": batch})
    return time.monotonic() - started


def fires(db: Path, since: float) -> list[tuple[float, float]]:
    """(due_at, fired_at) of the fires due at or after ``since``."""
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
        return conn.execute("SELECT due_at, fired_at FROM fires WHERE due_at >= ?", (since,)).fetchall()


async def main(a: argparse.Namespace) -> None:
    if a.period_s % 60:
        raise SystemExit("--period-s must be a multiple of 60")
    with tempfile.TemporaryDirectory(prefix="ekiden-bench-") as tmp:
        stack = Stack(Path(tmp) / "site")
        plan = StackPlan(relays=("main",), destinations=(DEST,), agents=(), workers_per_destination=2)
        await stack.start(plan)
        db = stack.site / "site.db"
        pid = next(p.pid for n, _, p in stack.procs if n == "manager")
        client = await ApiClient.connect(stack.endpoint, timeout_s=120)
        try:
            base = {
                "destination": {DEST: {"relay": "main"}},
                "jobnet": {"tick": {"job": [{"id": "t", "call": NOOP, "dest": DEST}]}},
            }
            await client.call("apply", definitions=base)
            print(f"registering {a.schedules} schedules ...", flush=True)
            register_s = await apply_all(client, idle_schedules(a.schedules, time.time()))
            await asyncio.sleep(2)
            rss_idle, _ = proc_mem_mb(pid)
            print(f"idle for {a.idle_s}s ...", flush=True)
            cpu0, t0 = proc_cpu_s(pid), time.monotonic()
            await asyncio.sleep(a.idle_s)
            idle_cpu = (proc_cpu_s(pid) - cpu0) / (time.monotonic() - t0)
            print(f"re-applying as crons every {a.period_s}s and firing for {a.fire_s}s ...", flush=True)
            reapply_s = await apply_all(client, firing_schedules(a.schedules, a.period_s))
            start = time.time() + 1
            cpu0, t0 = proc_cpu_s(pid), time.monotonic()
            await asyncio.sleep(a.fire_s)
            firing_cpu = (proc_cpu_s(pid) - cpu0) / (time.monotonic() - t0)
            end = time.time()
            rss_end, hwm = proc_mem_mb(pid)
        finally:
            await client.close()
            await stack.stop()
        found = [(due, fired) for due, fired in fires(db, start) if due < end - 5]
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as conn:
            states = dict(conn.execute("SELECT state, COUNT(*) FROM runs GROUP BY state").fetchall())
    late_ms = [(fired - due) * 1000 for due, fired in found]
    span_s = end - 5 - start
    expected = a.schedules * span_s / a.period_s
    print()
    print(f"Ekiden schedules ({a.schedules} schedules, SQLite synchronous=FULL)")
    print(
        f"  register            {register_s:8.2f} s   ({a.schedules / register_s:.0f} schedules/s, {BATCH} per apply)"
    )
    print(f"  re-apply changed    {reapply_s:8.2f} s")
    print(f"  manager idle CPU    {idle_cpu * 100:8.2f} %   of one core, over {a.idle_s}s with none due")
    print(f"  manager memory      {rss_idle:8.1f} MiB RSS idle, {rss_end:.1f} MiB at the end (peak {hwm:.1f})")
    print(f"  manager firing CPU  {firing_cpu * 100:8.2f} %   of one core (starting and finishing the runs too)")
    print(
        f"  fires               {len(found):8d}     in {span_s:.0f}s"
        f" ({len(found) / span_s:.1f}/s; expected ~{expected:.0f})"
    )
    print(f"  runs by state       {', '.join(f'{k} {v}' for k, v in sorted(states.items()))}")
    print(
        f"  lateness            p50 {pct(late_ms, 0.5):7.2f} ms   p99 {pct(late_ms, 0.99):7.2f} ms"
        f"   max {max(late_ms, default=float('nan')):7.2f} ms"
    )


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--schedules", type=int, default=10_000)
    p.add_argument("--idle-s", type=int, default=60)
    p.add_argument("--period-s", type=int, default=300, help="seconds between fires of one schedule")
    p.add_argument("--fire-s", type=int, default=180, help="seconds of firing to measure")
    asyncio.run(main(p.parse_args()))
