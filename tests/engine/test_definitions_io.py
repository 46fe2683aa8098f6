"""Definitions as data on real managers: export and import into an empty site, versions, dry runs, and the
multiple-instances policy."""

import asyncio
import tomllib
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client

from schemas.definitions import parse_definitions, parse_toml
from schemas.definitions_schema import parse_export
from schemas.errors import ErrorCode, WireError
from tests.engine.helpers import running_manager, scripted_agent, wait_for_run
from tests.schemas.test_definitions import RICH_TOML
from tests.schemas.test_jsonschema import UNIT_DOCS

#: Everything else a site holds, besides RICH_TOML's jobnets and destinations.
EXTRA_TOML = """
[agent.db-host]
restart = "STOP"
tenant = "sales"
max_running = 4

[group.etl]
agents = ["web-1", "web-2"]

[lock.tape]
capacity = 2

[calendar.c]
include = [{ weekdays = ["mon", "tue"] }]
exclude = [{ dates = ["2030-01-01"] }]

[calendar.biz]
include = [{ calendar = "c" }]

[schedule.nightly-run]
jobnet = "hourly"
at = ["02:30"]
timezone = "Asia/Tokyo"
calendar = "biz"
shift = "after"
params = { DAY = "today" }
"""


def _everything() -> dict[str, Any]:
    doc = parse_toml(RICH_TOML).to_dict()
    doc["destination"]["ga-lb"]["tenant"] = "sales"  # the manager refuses a job targeting another tenant
    extra = parse_definitions(tomllib.loads(EXTRA_TOML), complete=False).to_dict()
    jobnets = dict(doc["jobnet"])
    for i, unit_doc in enumerate(UNIT_DOCS):
        for name, body in unit_doc["jobnet"].items():
            jobnets[name if name == "body" else f"{name}{i}"] = body
        extra.setdefault("calendar", {}).update(unit_doc.get("calendar", {}))
    # Nested jobnets and loops name their body; the renamed jobnets keep pointing at it.
    return {**doc, **extra, "jobnet": jobnets}


async def test_export_then_import_into_an_empty_site_reproduces_every_definition(
    tmp_path: Path, sid: str, nats_url: str
) -> None:
    source = _everything()
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    async with running_manager(first, sid, nats_url) as api:
        await api.call("apply", definitions=source)
        exported = await api.call("export")
    defs = parse_export(exported)
    assert exported["definitions"] == defs.to_dict()
    assert sorted(defs.jobnets) == sorted(source["jobnet"])
    assert {k: sorted(v) for k, v in exported["definitions"].items()} == {k: sorted(v) for k, v in source.items()}
    async with running_manager(second, f"{sid}b", nats_url) as api:
        assert (await api.call("export"))["definitions"] == {}
        await api.call("apply", definitions=defs.to_dict())
        again = await api.call("export")
    assert again == exported


async def test_versions_and_their_bodies(site_dir: Path, sid: str, nats_url: str) -> None:
    def net(cmd: list[str]) -> dict[str, Any]:
        return {"jobnet": {"v": {"job": [{"id": "a", "cmd": cmd, "agent": "h"}]}}}

    async with running_manager(site_dir, sid, nats_url) as api:
        await api.call("apply", definitions=net(["one"]))
        await api.call("apply", definitions=net(["one"]))
        await api.call("apply", definitions=net(["two"]))
        versions = await api.call("versions", jobnet="v")
        assert [(v["version"], v["units"]) for v in versions] == [(1, 1), (2, 1)]
        body = await api.call("version", jobnet="v", version=1)
        assert body["definition"]["job"][0]["cmd"] == ["one"]
        with pytest.raises(WireError) as missing:
            await api.call("version", jobnet="v", version=3)
        assert missing.value.code == ErrorCode.NOT_FOUND


async def test_a_dry_run_walks_the_flow_and_runs_nothing(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    defs = {
        "destination": {"cloud": {"relay": "gw"}},
        "jobnet": {
            "inner": {"params": {"WHO": "x"}, "job": [{"id": "greet", "cmd": ["greet", "${WHO}"], "dest": "cloud"}]},
            "outer": {
                "params": {"DAY": "today"},
                "job": [
                    {"id": "check", "cmd": ["check", "--day=${DAY}"], "agent": name, "sets": ["N"]},
                    {
                        "id": "pick",
                        "type": "branch",
                        "after": ["check"],
                        "cases": [{"var": "N", "equals": "0", "to": ["stop"]}],
                        "else": ["sub"],
                    },
                    {"id": "sub", "type": "jobnet", "jobnet": "inner", "after": ["pick"], "params": {"WHO": "${N}"}},
                    {"id": "stop", "type": "end", "status": "succeeded", "after": ["pick"]},
                ],
            },
        },
    }
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        plan = await api.call("dry_run", jobnet="outer", params={"DAY": "2024-05-01"})
        await asyncio.sleep(0.2)
        assert agent.dispatches == []
        assert await api.call("runs") == []
    assert plan["params"] == {"DAY": "2024-05-01"}
    rows = [(u["unit"], u["depth"], u["target"], u["would"]) for u in plan["units"]]
    assert rows == [
        ("check", 0, f"agent:{name}", "run check --day=2024-05-01"),
        ("pick", 0, "manager", "branch: if ${N} == '0' -> stop; else -> sub"),
        ("sub", 0, "manager", "run jobnet inner with WHO=${N}"),
        ("sub/greet", 1, "dest:cloud via relay gw", "run greet ${N}"),
        ("stop", 0, "manager", "end the run succeeded"),
    ]


def _instances(agent: str, policy: str) -> dict[str, Any]:
    return {"jobnet": {"once": {"instances": policy, "job": [{"id": "a", "cmd": ["a"], "agent": agent}]}}}


async def test_instances_skip_refuses_a_second_run_and_queue_holds_it_until_the_first_ends(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=_instances(name, "skip"))
        first = (await api.call("run", jobnet="once"))["run"]
        await agent.wait_for(1)
        with pytest.raises(WireError) as skipped:
            await api.call("run", jobnet="once")
        assert skipped.value.code == ErrorCode.CONFLICT
        assert skipped.value.message == f"jobnet once not started: run {first} is still running (instances = skip)"
        await agent.run_job("a")
        assert (await wait_for_run(api, first))["state"] == "succeeded"

        await api.call("apply", definitions=_instances(name, "queue"))
        second = (await api.call("run", jobnet="once"))["run"]
        await agent.wait_for(2)
        third = (await api.call("run", jobnet="once"))["run"]
        fourth = (await api.call("run", jobnet="once"))["run"]
        doc = await api.call("status", run=third)
        assert (doc["state"], doc["queued"], doc["jobs"][0]["state"]) == ("running", True, "ready")
        await asyncio.sleep(0.2)
        assert len(agent.dispatches) == 2
        await agent.run_job("a")
        await agent.wait_for(3)
        assert agent.dispatches[2].run_id == third
        assert (await api.call("status", run=fourth))["queued"] is True
        await agent.run_job("a")
        await agent.wait_for(4)
        assert agent.dispatches[3].run_id == fourth
        await agent.run_job("a")
        for run in (second, third, fourth):
            assert (await wait_for_run(api, run))["state"] == "succeeded"
