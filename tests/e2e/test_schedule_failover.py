"""Schedules across a failover: two real managers on one site, the active one SIGKILLed right at a fire time."""

import asyncio
import signal
import time
from pathlib import Path

from ekiden.client import ApiClient
from ekiden.up import Stack, StackPlan
from tests.e2e.procs import rows

#: Seconds between fires of the test's schedule.
EVERY_S = 2
#: Seconds the managers' lease lasts (a takeover comes within about this long).
LEASE_S = 2.0
#: Times the active manager is killed.
KILLS = 2

DEFS = {
    "jobnet": {"tick": {"job": [{"id": "a", "cmd": ["true"], "agent": "nobody"}]}},
    "schedule": {"tick": {"jobnet": "tick", "cron": f"*/{EVERY_S} * * * * *", "catch_up": "all"}},
}


async def _fires(site: Path) -> list[tuple[int, int]]:
    return await asyncio.to_thread(rows, site, "SELECT fire_at, run_id FROM fires ORDER BY fire_at")


async def _wait_for_fire_after(site: Path, after: int, timeout_s: float = 30.0) -> int:
    """Wait until a fire later than ``after`` is committed; return its fire time."""
    deadline = time.monotonic() + timeout_s
    while True:
        fired = [at for at, _ in await _fires(site) if at > after]
        if fired:
            return max(fired)
        assert time.monotonic() < deadline, f"no fire after {after} within {timeout_s:g}s"
        await asyncio.sleep(0.02)


async def test_a_fire_starts_exactly_once_when_the_active_manager_dies_at_its_time(tmp_path: Path) -> None:
    site = tmp_path / "site"
    stack = Stack(site)
    plan = StackPlan(relays=(), destinations=(), agents=(), managers=2, lease_s=LEASE_S)
    killed_at: list[int] = []
    try:
        await stack.start(plan)
        client = await ApiClient.connect(stack.endpoint, timeout_s=10)
        try:
            await client.call("apply", definitions=DEFS)
        finally:
            await client.close()
        last = await _wait_for_fire_after(site, 0)
        for _ in range(KILLS):
            # Sleep to just before the next fire time, then kill the manager that is about to fire it: it may
            # die before, during or after the commit of that fire.
            target = last + EVERY_S
            await asyncio.sleep(max(0.0, target - 0.005 - time.time()))
            killed = await stack.signal_active(signal.SIGKILL)
            killed_at.append(target)
            await stack.wait_for_takeover(killed.epoch, LEASE_S * 3 + 20)
            await stack.respawn(killed.name)  # a standby again, for the next kill
            last = await _wait_for_fire_after(site, target + EVERY_S)
        await _wait_for_fire_after(site, last + EVERY_S)
    finally:
        await stack.stop()
    fires = await _fires(site)
    times = [at for at, _ in fires]
    runs = await asyncio.to_thread(rows, site, "SELECT run_id FROM runs ORDER BY run_id")
    # Every fire time from the first to the last, each once: none lost to the kills, none run twice.
    assert times == list(range(times[0], times[-1] + 1, EVERY_S)), times
    assert all(t in times for t in killed_at)
    # One run per fire, and no run that no fire recorded.
    assert sorted(run for _, run in fires) == [r for (r,) in runs]
