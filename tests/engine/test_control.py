"""Operator commands on running work, against a real manager, NATS and site database."""

import asyncio
import time
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas import subjects
from schemas.codec import decode
from schemas.errors import ErrorCode, WireError
from schemas.messages import Finished, JobStatus, Kind, event_for
from tests.engine.helpers import chain_definitions, running_manager, scripted_agent, wait_for_run


async def _states(api: Any, run: str) -> dict[str, str]:
    doc = await api.call("status", run=run)
    return {j["id"]: j["state"] for j in doc["jobs"]}


async def test_a_run_started_held_dispatches_nothing_until_released(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=chain_definitions(name, ["a", "b"]))
        started = await api.call("run", jobnet="chain", hold=True)
        run = started["run"]
        assert started["held"] is True
        await asyncio.sleep(0.3)
        assert agent.dispatches == []
        with pytest.raises(WireError) as again:
            await api.call("hold", run=run)
        assert again.value.code == ErrorCode.CONFLICT
        await api.call("release", run=run)
        await agent.wait_for(1)
        await agent.run_job("a")
        await agent.wait_for(2)
        await agent.run_job("b")
        assert (await wait_for_run(api, run))["state"] == "succeeded"


async def test_hold_and_release_a_job_and_refusals_that_name_the_state(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=chain_definitions(name, ["a", "b"]))
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        with pytest.raises(WireError) as running:
            await api.call("hold", run=run, job="a")
        assert "only a waiting or ready job can be held" in running.value.message
        assert (await api.call("hold", run=run, job="b"))["state"] == "held"
        await agent.run_job("a")
        await asyncio.sleep(0.3)
        assert (await _states(api, run)) == {"a": "succeeded", "b": "held"}
        assert len(agent.dispatches) == 1
        await api.call("release", run=run, job="b")
        await agent.wait_for(2)
        await agent.run_job("b")
        assert (await wait_for_run(api, run))["state"] == "succeeded"
        with pytest.raises(WireError) as missing:
            await api.call("release", run=run, job="nope")
        assert missing.value.code == ErrorCode.NOT_FOUND


async def test_skip_lets_the_jobs_after_it_run(site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=chain_definitions(name, ["a", "b", "c", "d"]))
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        with pytest.raises(WireError) as active:
            await api.call("skip", run=run, job="a")
        assert "kill it first" in active.value.message
        await api.call("skip", run=run, job="c")
        # c waits for its turn (after b, after a): nothing after it may start early.
        waiting = {j["id"]: j for j in (await api.call("status", run=run))["jobs"]}
        assert waiting["c"]["state"] == "waiting"
        assert waiting["c"]["reason"] == "skipped by an operator: passes when its turn comes"
        with pytest.raises(WireError) as twice:
            await api.call("skip", run=run, job="c")
        assert "already to be skipped" in twice.value.message
        await api.call("skip", run=run, job="b")
        await agent.run_job("a")
        await agent.wait_for(2)
        assert agent.dispatches[-1].payload["job"] == "d"
        await agent.run_job("d")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    assert [(j["id"], j["state"], j["reason"]) for j in doc["jobs"]] == [
        ("a", "succeeded", ""),
        ("b", "skipped", "skipped by an operator"),
        ("c", "skipped", "skipped by an operator"),
        ("d", "succeeded", ""),
    ]
    assert len(agent.dispatches) == 2


async def test_a_job_skipped_before_its_turn_does_not_pass_a_failure_before_it(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=chain_definitions(name, ["a", "b", "c"]))
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        assert (await api.call("hold", run=run, job="b"))["state"] == "held"
        await api.call("skip", run=run, job="b")  # replaces the hold
        await agent.run_job("a", exit_code=1)
        doc = await wait_for_run(api, run)
    assert doc["state"] == "failed"
    assert [(j["id"], j["state"], j["reason"]) for j in doc["jobs"]] == [
        ("a", "failed", ""),
        ("b", "skipped", "not run: a did not succeed"),
        ("c", "skipped", "not run: a did not succeed"),
    ]
    assert len(agent.dispatches) == 1


async def test_kill_reaches_the_executor_and_a_killed_run_ends_stopped(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {
        "jobnet": {
            "k": {
                "job": [
                    {"id": "long", "cmd": ["sleep", "60"], "agent": name},
                    {"id": "queued", "cmd": ["true"], "agent": name},
                    {"id": "after", "cmd": ["true"], "agent": name, "after": ["long"]},
                ]
            }
        }
    }
    kills = await nc.subscribe(subjects.control_all())
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="k"))["run"]
        await agent.wait_for(2)
        long = agent.dispatch_of("long")
        await agent.report([event_for(long, Kind.STARTED, {"host": "h", "pid": 7}, time.time())])
        await asyncio.sleep(0.2)
        assert (await api.call("kill", run=run))["killed"] == 2
        seen: set[str] = set()
        async with asyncio.timeout(10):
            while len(seen) < 2:
                msg = await kills.next_msg(timeout=10)
                assert decode(msg.data)[0].payload == {"action": "kill"}
                seen.add(msg.subject)
        assert seen == {
            subjects.control(f"agent:{name}", long.payload["attempt_id"]),
            subjects.control(f"agent:{name}", agent.dispatch_of("queued").payload["attempt_id"]),
        }
        # The executor kills the process group and reports it killed.
        fin = Finished(long.payload["attempt_id"], JobStatus.KILLED, -15, host="h")
        await agent.report([event_for(long, Kind.FINISHED, fin.to_wire(), time.time())])
        doc = await wait_for_run(api, run)
    assert doc["state"] == "stopped"
    assert {j["id"]: j["state"] for j in doc["jobs"]} == {"long": "killed", "queued": "killed", "after": "skipped"}


async def test_rerun_from_a_failed_job_leaves_earlier_successes_alone(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=chain_definitions(name, ["a", "b", "c"]))
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        await agent.run_job("a")
        await agent.wait_for(2)
        await agent.run_job("b", exit_code=2)
        assert (await wait_for_run(api, run))["state"] == "failed"
        with pytest.raises(WireError):
            await api.call("rerun", run=run, mode="sideways")
        result = await api.call("rerun", run=run, mode="from", job="b")
        assert result["rerun"] == ["b", "c"]
        await agent.wait_for(3)
        await agent.run_job("b")
        await agent.wait_for(4)
        await agent.run_job("c")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    assert [(j["id"], j["attempts"]) for j in doc["jobs"]] == [("a", 1), ("b", 2), ("c", 1)]
    assert [d.payload["job"] for d in agent.dispatches] == ["a", "b", "b", "c"]


async def test_set_status_by_hand_reopens_the_run_and_lets_the_rest_run(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=chain_definitions(name, ["a", "b"]))
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        await agent.run_job("a", exit_code=1)
        assert (await wait_for_run(api, run))["state"] == "failed"
        assert (await api.call("set_status", run=run, job="a", state="succeeded"))["reopened"] is True
        await agent.wait_for(2)
        await agent.run_job("b")
        doc = await wait_for_run(api, run)
    assert [(j["id"], j["state"]) for j in doc["jobs"]] == [("a", "succeeded"), ("b", "succeeded")]
    assert doc["state"] == "succeeded"


async def test_a_retried_submission_with_a_dedupe_key_never_starts_a_second_run(
    site_dir: Path, sid: str, nats_url: str, uid: str
) -> None:
    defs = chain_definitions(f"a{uid}", ["a"])
    async with running_manager(site_dir, sid, nats_url) as api:
        await api.call("apply", definitions=defs)
        first = await api.call("run", jobnet="chain", dedupe="nightly-2026-11-22", hold=True)
        second = await api.call("run", jobnet="chain", dedupe="nightly-2026-11-22", hold=True)
    assert second["run"] == first["run"]
    async with running_manager(site_dir, sid, nats_url) as api:  # a new manager finds it in the database
        third = await api.call("run", jobnet="chain", dedupe="nightly-2026-11-22", hold=True)
        runs = await api.call("runs", limit=10)
    assert third["run"] == first["run"]
    assert len(runs) == 1


async def test_purge_forgets_finished_runs_and_old_audit_but_keeps_running_ones(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=chain_definitions(name, ["a"]))
        done = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)
        await agent.run_job("a")
        await wait_for_run(api, done)
        going = (await api.call("run", jobnet="chain", hold=True))["run"]
        before = await api.call("audit", limit=10)
        assert [a["action"] for a in before] == ["run", "run", "apply"]
        await asyncio.sleep(0.05)
        await api.call("purge", older_than_s=0)
        runs = {r["run"] for r in await api.call("runs", limit=10)}
        with pytest.raises(WireError) as gone:
            await api.call("logs", run=done, job="a")
        after = await api.call("audit", limit=10)
    assert runs == {going}
    assert gone.value.code == ErrorCode.NOT_FOUND
    assert [a["action"] for a in after] == ["purge"]
    assert after[0]["who"] and after[0]["outcome"] == "ok"


async def test_a_killed_run_ends_stopped_and_is_asked_again_after_a_manager_restart(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    kills = await nc.subscribe(subjects.control_all())
    async with scripted_agent(nc, name) as agent:
        async with running_manager(site_dir, sid, nats_url) as api:
            await api.call("apply", definitions=chain_definitions(name, ["a", "b"]))
            run = (await api.call("run", jobnet="chain"))["run"]
            (a,) = await agent.wait_for(1)
            await agent.report([event_for(a, Kind.STARTED, {"host": "h", "pid": 7}, time.time())])
            await _job_running(api, run, "a")
            assert (await api.call("kill", run=run))["killed"] == 1
            first = await kills.next_msg(timeout=10)
        async with running_manager(site_dir, sid, nats_url) as api:
            # The new manager knows the run is being stopped and that 'a' was asked to die: the job's next
            # heartbeat brings the request again (the first might have been lost on the way).
            await agent.report([event_for(a, Kind.HEARTBEAT, {}, time.time(), 1)])
            again = await kills.next_msg(timeout=10)
            assert again.subject == first.subject == subjects.control(f"agent:{name}", a.payload["attempt_id"])
            fin = Finished(a.payload["attempt_id"], JobStatus.KILLED, -15, host="h")
            await agent.report([event_for(a, Kind.FINISHED, fin.to_wire(), time.time())])
            doc = await wait_for_run(api, run)
    assert doc["state"] == "stopped"
    assert [(j["id"], j["state"]) for j in doc["jobs"]] == [("a", "killed"), ("b", "skipped")]


async def test_a_rerun_of_a_run_that_timed_out_gets_its_whole_timeout_again(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = chain_definitions(name, ["a"])
    defs["jobnet"]["chain"]["timeout_s"] = 1
    async with running_manager(site_dir, sid, nats_url, tick_s=0.1) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="chain"))["run"]
        await agent.wait_for(1)  # and never answers: the run times out
        doc = await wait_for_run(api, run)
        assert doc["state"] == "failed" and "timed out" in doc["note"]
        await asyncio.sleep(1.2)  # the rerun comes later than the first run's timeout
        await api.call("rerun", run=run, mode="failed")
        await agent.wait_for(2)
        await agent.run_job("a")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    assert doc["note"] == ""
    assert [(j["id"], j["state"], j["attempts"]) for j in doc["jobs"]] == [("a", "succeeded", 2)]


async def _job_running(api: Any, run: str, job: str) -> None:
    async with asyncio.timeout(10):
        while True:
            if (await _states(api, run)).get(job) == "running":
                return
            await asyncio.sleep(0.05)
