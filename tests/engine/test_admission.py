"""Named resource locks and concurrency limits, on a real manager, NATS and site database."""

import asyncio
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from tests.engine.helpers import running_manager, scripted_agent, wait_for_run


def _net(agent: str, job_locks: list[Any] | None = None, **fields: Any) -> dict[str, Any]:
    job: dict[str, Any] = {"id": "work", "cmd": ["true"], "agent": agent}
    if job_locks is not None:
        job["locks"] = job_locks
    return {"job": [job], **fields}


async def _reason(api: Any, run: str, job: str, timeout_s: float = 10.0) -> str:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = await api.call("status", run=run)
        found = next(j for j in doc["jobs"] if j["id"] == job)
        if found["reason"] or time.monotonic() > deadline:
            return str(found["reason"])
        await asyncio.sleep(0.05)


async def test_two_jobnets_contending_for_an_exclusive_lock_are_never_both_inside(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {"lock": {"db": {}}, "jobnet": {"one": _net(name, ["db"]), "two": _net(name, ["db"])}}
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        first = (await api.call("run", jobnet="one"))["run"]
        await agent.wait_for(1)
        second = (await api.call("run", jobnet="two"))["run"]
        assert (await _reason(api, second, "work")).startswith(f"waiting for lock db (1/1 held by {first}:work)")
        locks = await api.call("locks")
        assert locks == [
            {
                "name": "db",
                "capacity": 1,
                "holders": [{"holder": f"{first}:work", "weight": 1}],
                "waiters": [f"{second}:work"],
            }
        ]
        await asyncio.sleep(0.3)
        assert len(agent.dispatches) == 1
        await agent.run_job("work")
        await agent.wait_for(2)
        assert agent.dispatches[1].run_id == second
        await agent.run_job("work")
        assert (await wait_for_run(api, second))["state"] == "succeeded"
        assert (await api.call("locks"))[0]["holders"] == []


async def test_a_shared_lock_admits_jobs_up_to_its_capacity_by_weight(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    heavy = [{"name": "tape", "weight": 2}]
    defs = {
        "lock": {"tape": {"capacity": 3}},
        "jobnet": {"heavy": _net(name, heavy), "light": _net(name, ["tape"])},
    }
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        await api.call("run", jobnet="heavy")
        await api.call("run", jobnet="light")
        await agent.wait_for(2)  # 2 + 1 fit in 3
        third = (await api.call("run", jobnet="heavy"))["run"]
        assert "waiting for lock tape (3/3" in await _reason(api, third, "work")
        holders = (await api.call("locks"))[0]["holders"]
        assert sorted(h["weight"] for h in holders) == [1, 2]


async def test_limits_per_destination_and_per_jobnet(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {
        "agent": {name: {"max_running": 1}},
        "jobnet": {"n": {"max_running": 5, "job": [{"id": f"j{i}", "cmd": ["true"], "agent": name} for i in range(3)]}},
    }
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="n"))["run"]
        for i in range(3):
            await agent.wait_for(i + 1)
            await asyncio.sleep(0.2)
            assert len(agent.dispatches) == i + 1  # one at a time on this agent
            await agent.run_job(agent.dispatches[i].payload["job"])
        assert (await wait_for_run(api, run))["state"] == "succeeded"


async def test_a_lock_is_released_when_its_holder_ends_after_a_manager_swap(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {"lock": {"db": {}}, "jobnet": {"one": _net(name, ["db"]), "two": _net(name, ["db"])}}
    async with scripted_agent(nc, name) as agent:
        async with running_manager(site_dir, sid, nats_url) as api:
            await api.call("apply", definitions=defs)
            first = (await api.call("run", jobnet="one"))["run"]
            await agent.wait_for(1)
            second = (await api.call("run", jobnet="two"))["run"]
            assert (await _reason(api, second, "work")).startswith("waiting for lock db")
        # A new manager takes the site over: it knows who holds the lock, and who waits.
        async with running_manager(site_dir, sid, nats_url) as api:
            assert (await api.call("locks"))[0]["holders"] == [{"holder": f"{first}:work", "weight": 1}]
            await asyncio.sleep(0.3)
            # The new manager may offer the holder's unconfirmed attempt again (same ID), never the waiter's.
            assert {d.run_id for d in agent.dispatches} == {first}
            await agent.run_job("work")
            await agent.wait_for_run(second)
            await agent.run_job("work")
            assert (await wait_for_run(api, second))["state"] == "succeeded"
            assert (await api.call("locks"))[0]["holders"] == []
