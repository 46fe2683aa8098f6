"""The site as the operator sees it: managers seen, the server ID a site belongs to, maintenance mode."""

import asyncio
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from engine.errors import StoreError
from engine.migrations import SCHEMA_VERSION
from engine.service import serve
from engine.settings import ManagerSettings
from engine.sitefile import read_status
from engine.store import Store
from runtime.bus import BusSettings
from schemas.errors import ErrorCode, WireError
from tests.engine.helpers import chain_definitions, running_manager, scripted_agent, wait_for_run

#: A PID for an in-process standby, so that its row is told apart from the active one's.
STANDBY_PID = 999_999_001


async def _wait_status(site: Path, ready: Callable[[dict[str, Any]], bool], timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = await asyncio.to_thread(read_status, site)
        if ready(doc):
            return doc
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.05)


async def test_the_active_manager_and_its_standby_are_seen_and_a_stopped_one_says_so(
    site_dir: Path, sid: str, nats_url: str
) -> None:
    async with running_manager(site_dir, sid, nats_url):
        standby = ManagerSettings(site_dir=site_dir, server_id=sid, bus=BusSettings(url=nats_url), pid=STANDBY_PID)
        stop = asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tg.create_task(serve(standby, stop))
            doc = await _wait_status(site_dir, lambda d: d["standbys"] == 1)
            stop.set()
        assert doc["server_id"] == sid
        assert doc["active"]["pid"] == os.getpid()
        assert {m["pid"]: m["state"] for m in doc["managers"]} == {os.getpid(): "active", STANDBY_PID: "standby"}
        after = await asyncio.to_thread(read_status, site_dir)
        assert {m["pid"]: m["state"] for m in after["managers"]}[STANDBY_PID] == "stopped"
    gone = await asyncio.to_thread(read_status, site_dir)
    assert gone["active"] is None, "a clean stop gives the lease up"
    assert {m["state"] for m in gone["managers"]} == {"stopped"}


async def test_a_site_refuses_a_manager_of_another_server_id(site_dir: Path, sid: str, nats_url: str) -> None:
    async with running_manager(site_dir, sid, nats_url):
        pass
    other = ManagerSettings(site_dir=site_dir, server_id=f"{sid}x", bus=BusSettings(url=nats_url))
    with pytest.raises(StoreError, match="belongs to server id"):
        await serve(other, asyncio.Event())


async def test_managers_opening_a_new_site_at_the_same_time_all_start(site_dir: Path) -> None:
    async with asyncio.TaskGroup() as tg:
        opening = [tg.create_task(Store.open(site_dir / "site.db")) for _ in range(4)]
    for task in opening:
        await task.result().close()
    assert (await asyncio.to_thread(read_status, site_dir))["schema_version"] == SCHEMA_VERSION


async def test_maintenance_holds_the_next_job_refuses_runs_and_survives_a_restart(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    agent = f"a{uid}"
    async with scripted_agent(nc, agent) as scripted:
        async with running_manager(site_dir, sid, nats_url) as client:
            await client.call("apply", definitions=chain_definitions(agent, ["one", "two"]))
            run = (await client.call("run", jobnet="chain"))["run"]
            await scripted.wait_for(1)
            assert await client.call("maintenance", on=True) == {"maintenance": True, "jobs_held": 0}
            # The ack comes after the commit of the turn that would also have dispatched 'two'.
            await scripted.run_job("one")
            jobs = {j["id"]: j["state"] for j in (await client.call("status", run=run))["jobs"]}
            assert jobs == {"one": "succeeded", "two": "ready"}
            with pytest.raises(WireError) as refused:
                await client.call("run", jobnet="chain")
            assert refused.value.code == ErrorCode.CONFLICT
            assert "maintenance" in refused.value.message

        assert (await asyncio.to_thread(read_status, site_dir))["maintenance"] is True
        async with running_manager(site_dir, sid, nats_url) as client:
            assert (await client.call("ping"))["maintenance"] is True
            assert await client.call("maintenance", on=False) == {"maintenance": False, "jobs_held": 0}
            await scripted.wait_for(2)
            await scripted.run_job("two")
            assert (await wait_for_run(client, run))["state"] == "succeeded"
        assert (await asyncio.to_thread(read_status, site_dir))["maintenance"] is False


async def test_maintenance_needs_a_boolean(site_dir: Path, sid: str, nats_url: str) -> None:
    async with running_manager(site_dir, sid, nats_url) as client:
        with pytest.raises(WireError) as refused:
            await client.call("maintenance", on="yes")
        assert refused.value.code == ErrorCode.INVALID
