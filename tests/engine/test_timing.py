"""Retries with backoff, run timeouts and end-delay monitoring, on a real manager (timers in its tick)."""

import asyncio
import itertools
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from schemas.messages import Kind, event_for
from tests.engine.helpers import running_manager, scripted_agent, wait_for_run

#: A fast tick, so that the tests' short delays come due soon.
TICK_S = 0.05


async def _until(api: Any, run: str, ready: Any, timeout_s: float = 20.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        doc: dict[str, Any] = await api.call("status", run=run)
        if ready(doc):
            return doc
        assert time.monotonic() < deadline, doc
        await asyncio.sleep(0.05)


async def test_a_failed_attempt_is_retried_after_a_growing_delay_recorded_in_its_attempts(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    retry = {"max": 3, "delay_s": 0.2, "backoff": 2.0, "max_delay_s": 0.5}
    defs = {"jobnet": {"flaky": {"job": [{"id": "fetch", "cmd": ["fetch"], "agent": name, "retry": retry}]}}}
    async with running_manager(site_dir, sid, nats_url, tick_s=TICK_S) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="flaky"))["run"]
        for n in (1, 2, 3):
            await agent.wait_for(n)
            await agent.run_job("fetch", exit_code=1)
        await agent.wait_for(4)
        ids = [d.payload["attempt_id"] for d in agent.dispatches]
        assert len(set(ids)) == 4, "each retry is a new attempt"
        await agent.run_job("fetch")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    job = doc["jobs"][0]
    assert (job["state"], job["attempts"]) == ("succeeded", 4)
    history = job["attempt_history"]
    assert [(a["n"], a["status"], a["delay_s"]) for a in history] == [
        (1, "failed", None),
        (2, "failed", 0.2),
        (3, "failed", 0.4),
        (4, "succeeded", 0.5),
    ]
    for before, after in itertools.pairwise(history):
        assert after["dispatched_at"] - before["finished_at"] >= after["delay_s"]
    assert job["flow"]["retries"] == [0.2, 0.4, 0.5]
    assert [e["kind"] for e in doc["events"]] == ["retry", "retry", "retry"]


async def test_retries_run_out_and_the_job_fails(site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str) -> None:
    name = f"a{uid}"
    defs = {"jobnet": {"doomed": {"job": [{"id": "x", "cmd": ["x"], "agent": name, "retry": {"max": 1}}]}}}
    async with running_manager(site_dir, sid, nats_url, tick_s=TICK_S) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="doomed"))["run"]
        await agent.wait_for(1)
        await agent.run_job("x", exit_code=4)
        await agent.wait_for(2)
        await agent.run_job("x", exit_code=5)
        doc = await wait_for_run(api, run)
    assert doc["state"] == "failed"
    assert (doc["jobs"][0]["state"], doc["jobs"][0]["exit_code"], doc["jobs"][0]["attempts"]) == ("failed", 5, 2)


async def test_a_run_past_its_timeout_is_killed_and_fails(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {
        "jobnet": {
            "slow": {
                "timeout_s": 0.3,
                "job": [
                    {"id": "long", "cmd": ["sleep"], "agent": name},
                    {"id": "after", "cmd": ["x"], "agent": name, "after": ["long"]},
                ],
            }
        }
    }
    async with running_manager(site_dir, sid, nats_url, tick_s=TICK_S) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="slow"))["run"]
        await agent.wait_for(1)
        doc = await wait_for_run(api, run)
    assert doc["state"] == "failed"
    assert doc["note"] == "timed out after 0.3s: killed"
    assert {j["id"]: j["state"] for j in doc["jobs"]} == {"long": "killed", "after": "skipped"}
    assert [e["kind"] for e in doc["events"]] == ["timeout"]


async def test_a_delayed_job_raises_an_event_and_goes_on_unless_kill_is_asked(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {
        "jobnet": {
            "late": {
                "delay": {"after_s": 0.2},
                "job": [
                    {"id": "watched", "cmd": ["x"], "agent": name, "delay": {"after_s": 0.2}},
                    {"id": "killed", "cmd": ["x"], "agent": name, "delay": {"after_s": 0.2, "kill": True}},
                ],
            }
        }
    }
    async with running_manager(site_dir, sid, nats_url, tick_s=TICK_S) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="late"))["run"]
        await agent.wait_for(2)
        watched = agent.dispatch_of("watched")
        await agent.report([event_for(watched, Kind.STARTED, {"host": "h", "pid": 1}, time.time())])
        doc = await _until(api, run, lambda d: len(d["events"]) == 3)
        jobs = {j["id"]: j for j in doc["jobs"]}
        assert doc["state"] == "running"
        assert doc["delayed"] is True
        assert jobs["watched"]["state"] == "running"
        assert jobs["watched"]["flow"]["delayed"] is True
        assert jobs["killed"]["state"] == "killed"
        await agent.run_job("watched")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "failed"
    assert {j["id"]: j["state"] for j in doc["jobs"]} == {"watched": "succeeded", "killed": "killed"}
    kinds = sorted((e["job_id"], e["kind"]) for e in doc["events"])
    assert kinds == [("", "delay"), ("killed", "delay"), ("watched", "delay")]
    assert (
        next(e for e in doc["events"] if e["job_id"] == "killed")["detail"] == "not ended 0.2s after its start; killed"
    )


async def test_a_retry_survives_a_manager_restart_and_a_rerun_starts_retries_afresh(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {
        "jobnet": {"again": {"job": [{"id": "x", "cmd": ["x"], "agent": name, "retry": {"max": 1, "delay_s": 0.5}}]}}
    }
    async with scripted_agent(nc, name) as agent:
        async with running_manager(site_dir, sid, nats_url, tick_s=TICK_S) as api:
            await api.call("apply", definitions=defs)
            run = (await api.call("run", jobnet="again"))["run"]
            await agent.wait_for(1)
            await agent.run_job("x", exit_code=1)
            doc = await _until(api, run, lambda d: d["jobs"][0]["state"] == "retry_wait")
            assert doc["jobs"][0]["reason"] == "attempt 1 failed (exit 1); retry 1/1 in 0.5s"
        # The manager that takes over dispatches the retry when it comes due, and only one.
        async with running_manager(site_dir, sid, nats_url, tick_s=TICK_S) as api:
            await agent.wait_for(2)
            await agent.run_job("x", exit_code=1)
            doc = await wait_for_run(api, run)
            assert (doc["state"], doc["jobs"][0]["attempts"]) == ("failed", 2)
            await api.call("rerun", run=run)
            await agent.wait_for(3)
            await agent.run_job("x", exit_code=1)
            await agent.wait_for(4)
            await agent.run_job("x")
            doc = await wait_for_run(api, run)
    assert (doc["state"], doc["jobs"][0]["attempts"]) == ("succeeded", 4)
    assert doc["jobs"][0]["flow"]["retries"] == [0.5]
    assert [a["delay_s"] for a in doc["jobs"][0]["attempt_history"]] == [None, 0.5, None, 0.5]
