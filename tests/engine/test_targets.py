"""Where jobs go: agent groups, broadcast, tenants, agent states and the restart table for lost executors."""

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Kind
from tests.engine.helpers import running_manager, scripted_agent, wait_for_run


def _defs(jobs: list[dict[str, Any]], **extra: Any) -> dict[str, Any]:
    return {"jobnet": {"n": {"job": jobs}}, **extra}


async def _state_of(api: Any, run: str, job: str, want: str, timeout_s: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = await api.call("status", run=run)
        found: dict[str, Any] = next(j for j in doc["jobs"] if j["id"] == job)
        if found["state"] == want:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{job} is {found['state']}, not {want}: {found}")
        await asyncio.sleep(0.05)


async def test_group_job_goes_to_the_first_member_that_takes_jobs(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    a1, a2 = f"a{uid}1", f"a{uid}2"
    defs = _defs([{"id": "j", "cmd": ["true"], "group": "g"}], group={"g": {"agents": [a1, a2]}})
    async with (
        running_manager(site_dir, sid, nats_url) as api,
        scripted_agent(nc, a1) as first,
        scripted_agent(nc, a2) as second,
    ):
        await api.call("apply", definitions=defs)
        assert (await api.call("agent", name=a1, action="hold"))["state"] == "held"
        run = (await api.call("run", jobnet="n"))["run"]
        await second.wait_for(1)
        await second.run_job("j")
        assert (await wait_for_run(api, run))["jobs"][0]["target"] == f"agent:{a2}"
        await api.call("agent", name=a1, action="release")
        run = (await api.call("run", jobnet="n"))["run"]
        await first.wait_for(1)
        await first.run_job("j")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    assert doc["jobs"][0]["target"] == f"agent:{a1}"
    assert len(second.dispatches) == 1


async def test_broadcast_gives_one_result_per_member_and_fails_if_one_fails(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    names = [f"a{uid}{i}" for i in range(3)]
    defs = _defs([{"id": "all", "cmd": ["true"], "group": "g", "broadcast": True}], group={"g": {"agents": names}})
    async with (
        running_manager(site_dir, sid, nats_url) as api,
        scripted_agent(nc, names[0]) as x,
        scripted_agent(nc, names[1]) as y,
        scripted_agent(nc, names[2]) as z,
    ):
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="n"))["run"]
        for agent, code in ((x, 0), (y, 4), (z, 0)):
            await agent.wait_for(1)
            await agent.run_job("all", exit_code=code)
        doc = await wait_for_run(api, run)
    job = doc["jobs"][0]
    assert doc["state"] == "failed"
    assert (job["state"], job["exit_code"], job["target"]) == ("failed", 4, "group:g")
    assert [(m["agent"], m["state"], m["exit_code"]) for m in job["members"]] == [
        (names[0], "succeeded", 0),
        (names[1], "failed", 4),
        (names[2], "succeeded", 0),
    ]
    assert len({d.payload["attempt_id"] for d in x.dispatches + y.dispatches + z.dispatches}) == 3


@pytest.mark.parametrize(
    ("attribute", "restart", "outcome"),
    [
        ("RESTART", True, "restarted"),
        ("RESTART", False, "lost"),
        ("PURGE", True, "lost"),
        ("STOP", True, "held"),
    ],
)
async def test_restart_table_when_an_agent_goes_silent(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str, attribute: str, restart: bool, outcome: str
) -> None:
    name = f"a{uid}"
    defs = _defs(
        [{"id": "j", "cmd": ["true"], "agent": name, "restart": restart}], agent={name: {"restart": attribute}}
    )
    settings = {"agent_lost_after_s": 0.5, "tick_s": 0.1}
    async with running_manager(site_dir, sid, nats_url, **settings) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="n"))["run"]
        await agent.wait_for(1)  # accepted, then never heard of again: the agent died
        if outcome == "restarted":
            await agent.wait_for(2)
            await agent.run_job("j")
            doc = await wait_for_run(api, run)
            assert (doc["state"], doc["jobs"][0]["attempts"]) == ("succeeded", 2)
            attempts = [d.payload["attempt_id"] for d in agent.dispatches]
            assert attempts == [f"{sid}:{run}:j:1", f"{sid}:{run}:j:2"]
        elif outcome == "lost":
            doc = await wait_for_run(api, run)
            assert (doc["state"], doc["jobs"][0]["state"], doc["jobs"][0]["attempts"]) == ("failed", "lost", 1)
            assert "no heartbeat" in doc["jobs"][0]["reason"]
        else:
            job = await _state_of(api, run, "j", "held")
            assert "held for the operator" in job["reason"]
            assert (await api.call("status", run=run))["state"] == "running"
            assert len(agent.dispatches) == 1


async def test_cleanup_of_a_dead_agent_loses_its_work_and_stops_routing_to_it(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=_defs([{"id": "j", "cmd": ["true"], "agent": name}]))
        run = (await api.call("run", jobnet="n"))["run"]
        await agent.wait_for(1)
        result = await api.call("agent", name=name, action="cleanup")
        assert (result["state"], result["attempts_lost"]) == ("blocked", 1)
        job = await _state_of(api, run, "j", "ready")
        assert job["reason"] == f"agent {name} is blocked"
        await asyncio.sleep(0.3)
        assert len(agent.dispatches) == 1
        await api.call("agent", name=name, action="release")
        await agent.wait_for(2)
        await agent.run_job("j")
        doc = await wait_for_run(api, run)
    assert (doc["state"], doc["jobs"][0]["attempts"]) == ("succeeded", 2)


async def test_a_jobnet_cannot_target_another_tenants_destination_agent_or_group(
    site_dir: Path, sid: str, nats_url: str
) -> None:
    defs = {
        "destination": {"d": {"tenant": "sales"}},
        "agent": {"h": {"tenant": "sales"}},
        "group": {"g": {"agents": ["h"], "tenant": "sales"}},
        "jobnet": {
            "hr": {
                "tenant": "hr",
                "job": [
                    {"id": "a", "cmd": ["true"], "dest": "d"},
                    {"id": "b", "cmd": ["true"], "agent": "h"},
                    {"id": "c", "cmd": ["true"], "group": "g"},
                    {"id": "e", "cmd": ["true"], "group": "nope"},
                ],
            }
        },
    }
    async with running_manager(site_dir, sid, nats_url) as api:
        with pytest.raises(WireError) as err:
            await api.call("apply", definitions=defs)
        assert await api.call("jobnets") == []
    assert err.value.code == ErrorCode.INVALID
    for line in [
        "jobnet.hr.job[0].dest: 'd' belongs to tenant 'sales', not 'hr'",
        "jobnet.hr.job[1].agent: 'h' belongs to tenant 'sales', not 'hr'",
        "jobnet.hr.job[2].group: 'g' belongs to tenant 'sales', not 'hr'",
        "jobnet.hr.job[3].group: no agent group named 'nope' is defined",
    ]:
        assert line in err.value.message


async def test_a_dispatch_a_relay_holds_but_did_not_queue_is_offered_again(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    relay = f"r{uid}"
    defs = _defs([{"id": "j", "cmd": ["true"], "dest": "d"}], destination={"d": {"relay": relay}})
    seen: list[str] = []
    queue_it, offered_thrice = asyncio.Event(), asyncio.Event()

    async def relay_stand_in() -> None:
        sub = await nc.subscribe(subjects.relay_run(relay))
        async for msg in sub.messages:
            aids = [e.payload["attempt_id"] for e in decode(msg.data)]
            seen.extend(aids)
            if len(seen) >= 3:
                offered_thrice.set()
            queued = aids if queue_it.is_set() else []
            ack = {"accepted": aids, "queued": queued, "refused": []}
            await msg.respond(encode_one(Envelope(Kind.ACK, sid, ack)))

    settings = {"held_resend_s": 0.3, "tick_s": 0.1}
    async with running_manager(site_dir, sid, nats_url, **settings) as api, asyncio.TaskGroup() as tg:
        stand_in = tg.create_task(relay_stand_in())
        await asyncio.sleep(0.1)
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="n"))["run"]
        async with asyncio.timeout(10):
            await offered_thrice.wait()
        queue_it.set()
        await asyncio.sleep(1.0)  # one more offer is answered "queued"; after it, no more
        count = len(seen)
        await asyncio.sleep(1.0)
        stand_in.cancel()
    assert len(seen) >= 3
    assert set(seen) == {f"{sid}:{run}:j:1"}
    assert len(seen) == count
