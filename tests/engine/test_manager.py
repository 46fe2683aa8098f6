"""The manager against a real nats-server and a real site database, driven through its API and events."""

import asyncio
import os
import sqlite3
import time
from pathlib import Path

import pytest
from nats.aio.client import Client

from schemas import subjects
from schemas.codec import decode, encode, encode_one
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Finished, JobStatus, Kind, event_for
from tests.engine.helpers import chain_definitions, running_manager, scripted_agent, wait_for_run


async def test_chain_runs_in_order_and_succeeds(site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str) -> None:
    agent_name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, agent_name) as agent:
        applied = await api.call("apply", definitions=chain_definitions(agent_name, ["a", "b", "c"]))
        assert applied["jobnets"] == [{"name": "chain", "version": 1, "changed": True}]
        run = (await api.call("run", jobnet="chain"))["run"]
        for i, job in enumerate(["a", "b", "c"]):
            await agent.wait_for(i + 1)
            assert [d.payload["job"] for d in agent.dispatches] == ["a", "b", "c"][: i + 1]
            await agent.run_job(job, stdout=f"out of {job}".encode())
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    assert [(j["id"], j["state"], j["exit_code"], j["attempts"]) for j in doc["jobs"]] == [
        ("a", "succeeded", 0, 1),
        ("b", "succeeded", 0, 1),
        ("c", "succeeded", 0, 1),
    ]


async def test_failed_job_fails_the_run_and_blocks_its_dependants(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    agent_name = f"a{uid}"
    defs = {
        "jobnet": {
            "fork": {
                "job": [
                    {"id": "root", "cmd": ["true"], "agent": agent_name},
                    {"id": "bad", "cmd": ["false"], "agent": agent_name, "after": ["root"]},
                    {"id": "good", "cmd": ["true"], "agent": agent_name, "after": ["root"]},
                    {"id": "after-bad", "cmd": ["true"], "agent": agent_name, "after": ["bad"]},
                    {"id": "join", "cmd": ["true"], "agent": agent_name, "after": ["after-bad", "good"]},
                ]
            }
        }
    }
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, agent_name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="fork"))["run"]
        await agent.wait_for(1)
        await agent.run_job("root")
        await agent.wait_for(3)
        await agent.run_job("bad", exit_code=3)
        await agent.run_job("good")
        doc = await wait_for_run(api, run)
        await asyncio.sleep(0.2)
        dispatched = sorted(d.payload["job"] for d in agent.dispatches)
    states = {j["id"]: (j["state"], j["exit_code"]) for j in doc["jobs"]}
    assert doc["state"] == "failed"
    assert states == {
        "root": ("succeeded", 0),
        "bad": ("failed", 3),
        "good": ("succeeded", 0),
        "after-bad": ("skipped", None),
        "join": ("skipped", None),
    }
    assert dispatched == ["bad", "good", "root"]


async def test_duplicate_and_stale_results_change_nothing(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    agent_name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, agent_name) as agent:
        await api.call("apply", definitions=chain_definitions(agent_name, ["one", "two"]))
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        first = await agent.run_job("one", stdout=b"first")
        await agent.wait_for(2)
        # The same result again, and a contradicting one under the same event ID: both acked, neither applied.
        again = await agent.run_job("one", exit_code=0, stdout=b"first")
        assert again == first
        d = agent.dispatch_of("one")
        liar = Finished(d.payload["attempt_id"], JobStatus.FAILED, 99, host="liar")
        assert await agent.report([event_for(d, Kind.FINISHED, liar.to_wire(), time.time())]) == [first[1]]
        # A result for an attempt that was never dispatched changes nothing either.
        ghost = Envelope(Kind.FINISHED, sid, {**liar.to_wire(), "attempt_id": f"{sid}:{run}:one:9", "eid": "ghost"})
        assert await agent.report([ghost]) == ["ghost"]
        await agent.run_job("two")
        doc = await wait_for_run(api, run)
        logs = await api.call("logs", run=run, job="one")
    assert doc["state"] == "succeeded"
    assert [(j["id"], j["exit_code"], j["attempts"]) for j in doc["jobs"]] == [("one", 0, 1), ("two", 0, 1)]
    assert logs["stdout"] == b"first"
    with sqlite3.connect(site_dir / "site.db") as db:
        assert db.execute("SELECT COUNT(*) FROM attempts WHERE job_id='one'").fetchone() == (1,)


async def test_invalid_definitions_are_refused_whole_and_nothing_is_registered(
    site_dir: Path, sid: str, nats_url: str
) -> None:
    bad = {
        "jobnet": {
            "good": {"job": [{"id": "x", "cmd": ["true"], "agent": "a"}]},
            "broken": {
                "job": [
                    {"id": "a", "cmd": ["true"], "agent": "a", "after": ["b"]},
                    {"id": "b", "cmd": ["true"], "agent": "a", "after": ["a"]},
                    {"id": "c", "agent": "a", "timeout_s": -1, "after": ["nope"]},
                ]
            },
        }
    }
    async with running_manager(site_dir, sid, nats_url) as api:
        with pytest.raises(WireError) as err:
            await api.call("apply", definitions=bad)
        assert await api.call("jobnets") == []
        with pytest.raises(WireError) as missing:
            await api.call("run", jobnet="good")
    assert err.value.code == ErrorCode.INVALID
    message = err.value.message
    assert "jobnet.broken.job[2]: missing command" in message
    assert "jobnet.broken.job[2].timeout_s" in message
    assert "jobnet.broken.job[2].after: unknown job 'nope'" in message
    assert missing.value.code == ErrorCode.NOT_FOUND


async def test_apply_versions_only_what_changed_and_a_run_keeps_its_version(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    agent_name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, agent_name) as agent:
        v1 = chain_definitions(agent_name, ["a"])
        assert (await api.call("apply", definitions=v1))["jobnets"][0]["version"] == 1
        assert (await api.call("apply", definitions=v1))["jobnets"][0] == {
            "name": "chain",
            "version": 1,
            "changed": False,
        }
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        v2 = chain_definitions(agent_name, ["a", "b"])
        assert (await api.call("apply", definitions=v2))["jobnets"][0]["version"] == 2
        await agent.run_job("a")
        doc = await wait_for_run(api, run)
    assert doc["version"] == 1
    assert [j["id"] for j in doc["jobs"]] == ["a"]


async def test_unaccepted_dispatch_is_sent_again_with_the_same_attempt_id(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    agent_name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url, dispatch_timeout_s=0.5, tick_s=0.2) as api:
        await api.call("apply", definitions=chain_definitions(agent_name, ["only"]))
        run = (await api.call("run", jobnet="chain"))["run"]
        await asyncio.sleep(0.3)
        doc = await api.call("status", run=run)
        assert doc["jobs"][0]["state"] == "dispatched"
        assert "not reachable" in doc["jobs"][0]["reason"]
        async with scripted_agent(nc, agent_name) as agent:
            await agent.wait_for(1)
            await agent.run_job("only")
            doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    assert doc["jobs"][0]["attempts"] == 1
    assert agent.dispatches[0].payload["attempt_id"] == f"{sid}:{run}:only:1"


async def test_garbage_on_every_manager_subject_leaves_it_serving(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    agent_name = f"a{uid}"
    garbage = [b"", b"\xc1", b"\x92\x01", b"\x91" * 5000, os.urandom(512), encode_one(Envelope(Kind.HELLO, sid))[:-3]]
    wrong_kind = encode([Envelope(Kind.DISPATCH, sid, {"attempt_id": 5})])
    no_ids = encode([Envelope(Kind.FINISHED, sid, {"status": "succeeded"})])
    targets = [subjects.events(sid), subjects.api(sid, "status"), subjects.api(sid, "apply"), subjects.api(sid, "nope")]
    targets += [subjects.agent_heartbeat(agent_name)]
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, agent_name) as agent:
        for subject in targets:
            for body in [*garbage, wrong_kind, no_ids]:
                await nc.publish(subject, body)
        for subject in targets[:4]:
            for body in garbage:
                reply = await nc.request(subject, body, timeout=5)
                assert decode(reply.data)[0].kind == Kind.ERROR
        await api.call("apply", definitions=chain_definitions(agent_name, ["x"]))
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        await agent.run_job("x")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"


async def test_progress_updates_are_published_after_commit(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    agent_name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, agent_name) as agent:
        await api.call("apply", definitions=chain_definitions(agent_name, ["p"]))
        sub = await nc.subscribe(subjects.run_updates(sid, "1"))
        run = (await api.call("run", jobnet="chain"))["run"]
        assert run == "1"
        await agent.wait_for(1)
        d = agent.dispatch_of("p")
        await agent.report([event_for(d, Kind.STARTED, {"host": "h", "pid": 1}, time.time())])
        await asyncio.sleep(0.2)
        await agent.run_job("p")
        seen: list[tuple[str, str]] = []
        async with asyncio.timeout(10):
            while ("run", "succeeded") not in seen:
                msg = await sub.next_msg(timeout=10)
                for env in decode(msg.data):
                    seen += [(j["id"], j["state"]) for j in env.payload["jobs"]]
                    seen.append(("run", env.payload["state"]))
    assert ("p", "dispatched") in seen
    assert ("p", "running") in seen
    assert ("p", "succeeded") in seen


async def test_a_registration_naming_another_agent_than_its_subject_is_dropped(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    me, other = f"a{uid}", f"b{uid}"

    def register(name: str) -> bytes:
        return encode_one(Envelope(Kind.REGISTER, "", {"name": name, "kind": "agent", "slots": 2, "running": 0}))

    async with running_manager(site_dir, sid, nats_url) as api:
        # Agent 'me' may publish only on its own subject: there, it cannot pass itself off as 'other'.
        await nc.publish(subjects.agent_heartbeat(me), register(other))
        await nc.publish(subjects.agent_heartbeat(me), register(me))
        async with asyncio.timeout(10):
            while True:
                names = {a["name"] for a in await api.call("agents")}
                if me in names:
                    break
                await asyncio.sleep(0.05)
    assert other not in names
