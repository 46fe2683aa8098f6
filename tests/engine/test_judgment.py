"""End judgment on a real manager: exit code thresholds, warnings that go on, recovery units, continue_on_failure."""

from pathlib import Path
from typing import Any

from nats.aio.client import Client

from tests.engine.helpers import running_manager, scripted_agent, wait_for_run


def _job(job_id: str, agent: str, **more: Any) -> dict[str, Any]:
    return {"id": job_id, "cmd": ["work"], "agent": agent, **more}


def _states(doc: dict[str, Any]) -> dict[str, str]:
    return {j["id"]: j["state"] for j in doc["jobs"]}


async def test_a_warning_lets_the_flow_go_on_and_an_abnormal_code_stops_it(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    judge = {"warning_from": 1, "abnormal_from": 10}
    defs = {"jobnet": {"judged": {"job": [_job("check", name, judge=judge), _job("next", name, after=["check"])]}}}
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        warned = (await api.call("run", jobnet="judged"))["run"]
        await agent.wait_for(1)
        await agent.run_job("check", exit_code=3)
        await agent.wait_for(2)
        await agent.run_job("next")
        doc = await wait_for_run(api, warned)
        assert doc["state"] == "succeeded"
        assert _states(doc) == {"check": "warning", "next": "succeeded"}
        assert doc["jobs"][0]["exit_code"] == 3
        assert "a warning" in doc["jobs"][0]["reason"]

        failed = (await api.call("run", jobnet="judged"))["run"]
        await agent.wait_for_run(failed)
        await agent.run_job("check", exit_code=10)
        doc = await wait_for_run(api, failed)
    assert doc["state"] == "failed"
    assert _states(doc) == {"check": "failed", "next": "skipped"}


def _recovery_defs(agent: str) -> dict[str, Any]:
    return {
        "jobnet": {
            "rec": {
                "job": [
                    _job("load", agent),
                    _job("publish", agent, after=["load"]),
                    _job("cleanup", agent, after=["load"], recovery=True),
                    _job("notify", agent, after=["publish", "cleanup"]),
                ]
            }
        }
    }


async def test_a_recovery_unit_runs_only_after_an_abnormal_end(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=_recovery_defs(name))
        good = (await api.call("run", jobnet="rec"))["run"]
        await agent.wait_for(1)
        await agent.run_job("load")
        await agent.wait_for(2)
        await agent.run_job("publish")
        await agent.wait_for(3)
        # The join after the normal path and the recovery unit waits only for the path taken.
        assert agent.dispatches[-1].payload["job"] == "notify"
        await agent.run_job("notify")
        doc = await wait_for_run(api, good)
        assert doc["state"] == "succeeded"
        assert _states(doc) == {
            "load": "succeeded",
            "publish": "succeeded",
            "cleanup": "skipped",
            "notify": "succeeded",
        }
        cleanup = next(j for j in doc["jobs"] if j["id"] == "cleanup")
        assert cleanup["reason"] == "not run: nothing it recovers ended abnormally"

        bad = (await api.call("run", jobnet="rec"))["run"]
        await agent.wait_for(4)
        await agent.run_job("load", exit_code=2)
        await agent.wait_for(5)
        assert agent.dispatches[-1].payload["job"] == "cleanup"
        await agent.run_job("cleanup")
        doc = await wait_for_run(api, bad)
    # The failure stays a failure (JP1's rule): the recovery unit ran, what came after the failed job did not.
    assert doc["state"] == "failed"
    assert _states(doc) == {"load": "failed", "publish": "skipped", "cleanup": "succeeded", "notify": "skipped"}


async def test_continue_on_failure_lets_the_jobs_after_it_run(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {
        "jobnet": {
            "tolerant": {
                "job": [
                    _job("optional", name, continue_on_failure=True),
                    _job("main", name, after=["optional"]),
                    _job("alert", name, after=["optional"], recovery=True),
                ]
            }
        }
    }
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="tolerant"))["run"]
        await agent.wait_for(1)
        await agent.run_job("optional", exit_code=1)
        await agent.wait_for(3)
        assert {d.payload["job"] for d in agent.dispatches[1:]} == {"main", "alert"}
        await agent.run_job("main")
        await agent.run_job("alert")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    assert _states(doc) == {"optional": "failed", "main": "succeeded", "alert": "succeeded"}
