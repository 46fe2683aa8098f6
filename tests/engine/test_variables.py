"""Run variables on a real manager, NATS and site database: parameters, marked stdout lines, substitution."""

from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas.errors import ErrorCode, WireError
from tests.engine.helpers import running_manager, scripted_agent, wait_for_run


def _defs(agent: str) -> dict[str, Any]:
    return {
        "jobnet": {
            "vars": {
                "params": {"DAY": "today", "MODE": "full"},
                "job": [
                    {"id": "count", "cmd": ["count-rows"], "agent": agent, "sets": ["ROWS"]},
                    {"id": "gate", "cmd": ["true"], "agent": agent, "after": ["count"]},
                    {
                        "id": "load",
                        "cmd": ["load", "--day=${DAY}", "${ROWS}", "$${kept}"],
                        "env": {"N": "${ROWS}", "RUN": "${EKIDEN_RUN_ID}"},
                        "cwd": "/data/${DAY}",
                        "agent": agent,
                        "after": ["gate"],
                    },
                    {
                        "id": "report",
                        "cmd": 'echo "$EKIDEN_VAR_ROWS" ${ROWS}',
                        "shell": True,
                        "agent": agent,
                        "after": ["gate"],
                    },
                ],
            }
        }
    }


async def test_a_variable_printed_by_a_job_reaches_the_next_as_data_and_survives_a_restart(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    day = "2024-05-01; rm -rf / $(reboot)"
    async with scripted_agent(nc, name) as agent:
        async with running_manager(site_dir, sid, nats_url) as api:
            await api.call("apply", definitions=_defs(name))
            run = (await api.call("run", jobnet="vars", params={"DAY": day}))["run"]
            await agent.wait_for(1)
            stdout = b"counting\n::ekiden-var ROWS=42 rows; echo pwned\n::ekiden-var bad name=x\n"
            await agent.run_job("count", stdout=stdout)
            await agent.wait_for(2)
            doc = await api.call("status", run=run)
            assert doc["variables"] == {"DAY": day, "MODE": "full", "ROWS": "42 rows; echo pwned"}
        # A new manager takes over the site: the variables come back from the database, not from memory.
        async with running_manager(site_dir, sid, nats_url) as api:
            await agent.run_job("gate")
            await agent.wait_for(4)
            load = agent.dispatch_of("load").payload
            assert load["argv"] == ["load", f"--day={day}", "42 rows; echo pwned", "${kept}"]
            assert load["cwd"] == f"/data/{day}"
            assert load["env"]["N"] == "42 rows; echo pwned"
            assert load["env"]["RUN"] == run
            assert load["env"]["EKIDEN_VAR_ROWS"] == "42 rows; echo pwned"
            assert load["env"]["EKIDEN_VAR_MODE"] == load["env"]["EKIDEN_PARAM_MODE"] == "full"
            report = agent.dispatch_of("report").payload
            assert report["shell"] == 'echo "$EKIDEN_VAR_ROWS" ${ROWS}', "shell text is never substituted"
            assert report["env"]["EKIDEN_VAR_ROWS"] == "42 rows; echo pwned"
            await agent.run_job("load")
            await agent.run_job("report")
            doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    jobs = {j["id"]: j for j in doc["jobs"]}
    assert jobs["count"]["variables"] == {"ROWS": "42 rows; echo pwned"}
    assert jobs["load"]["variables"] == {}


async def test_a_declared_variable_no_job_set_fails_the_job_that_needs_it(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=_defs(name))
        run = (await api.call("run", jobnet="vars"))["run"]
        await agent.wait_for(1)
        await agent.run_job("count", stdout=b"no marked line\n")
        await agent.wait_for(2)
        await agent.run_job("gate")
        await agent.wait_for(3)
        assert agent.dispatches[-1].payload["job"] == "report"
        await agent.run_job("report")
        doc = await wait_for_run(api, run)
    jobs = {j["id"]: j for j in doc["jobs"]}
    assert doc["state"] == "failed"
    assert jobs["load"]["state"] == "failed"
    assert jobs["load"]["reason"] == "not started: variable ${ROWS} has no value in this run"
    assert jobs["load"]["attempts"] == 0


async def test_apply_refuses_an_unknown_variable_naming_its_path(
    site_dir: Path, sid: str, nats_url: str, uid: str
) -> None:
    defs = {
        "jobnet": {
            "bad": {
                "params": {"DAY": "x"},
                "job": [
                    {"id": "a", "cmd": ["echo", "${DAY}", "${NOPE}"], "agent": "h"},
                    {"id": "b", "cmd": ["true"], "agent": "h", "env": {"E": "${LATER}"}},
                    {"id": "c", "cmd": ["true"], "agent": "h", "sets": ["LATER"], "after": ["b"]},
                ],
            }
        }
    }
    async with running_manager(site_dir, sid, nats_url) as api:
        with pytest.raises(WireError) as refused:
            await api.call("apply", definitions=defs)
        assert refused.value.code == ErrorCode.INVALID
        assert "jobnet.bad.job[0].cmd[2]: unknown variable ${NOPE}" in refused.value.message
        assert "jobnet.bad.job[1].env.E: unknown variable ${LATER}" in refused.value.message
        assert "${DAY}" not in refused.value.message
        assert await api.call("jobnets") == []
