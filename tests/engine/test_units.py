"""Flow units on a real manager, NATS and site database: branch, loop, nested jobnet, wait, info, end, file watch."""

import asyncio
import time
from pathlib import Path
from typing import Any

from nats.aio.client import Client

from schemas.messages import Kind, event_for
from schemas.units import FILEWATCH_CALL
from tests.engine.helpers import ScriptedAgent, running_manager, scripted_agent, wait_for_run

TICK_S = 0.05


def _job(job_id: str, agent: str, *argv: str, **more: Any) -> dict[str, Any]:
    return {"id": job_id, "cmd": [job_id, *argv], "agent": agent, **more}


def _states(doc: dict[str, Any]) -> dict[str, str]:
    return {j["id"]: j["state"] for j in doc["jobs"]}


async def _next_job(agent: ScriptedAgent, count: int) -> str:
    await agent.wait_for(count)
    return str(agent.dispatches[count - 1].payload["job"])


def _branch_defs(agent: str) -> dict[str, Any]:
    cases = [
        {"job": "check", "exit": 0, "to": ["full"]},
        {"var": "MODE", "equals": "delta", "to": ["delta"]},
    ]
    return {
        "jobnet": {
            "route": {
                "params": {"MODE": "full"},
                "job": [
                    _job("check", agent, judge={"warning_from": 1, "abnormal_from": 5}),
                    {"id": "pick", "type": "branch", "after": ["check"], "cases": cases, "else": ["notify"]},
                    _job("full", agent, after=["pick"]),
                    _job("delta", agent, after=["pick"]),
                    _job("notify", agent, after=["pick"]),
                    _job("report", agent, after=["full", "delta"]),
                ],
            }
        }
    }


async def test_a_branch_takes_one_path_and_a_join_waits_only_for_it(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=_branch_defs(name))
        # Exit 0: the first case.
        first = (await api.call("run", jobnet="route"))["run"]
        assert await _next_job(agent, 1) == "check"
        await agent.run_job("check")
        assert await _next_job(agent, 2) == "full"
        await agent.run_job("full")
        assert await _next_job(agent, 3) == "report"
        await agent.run_job("report")
        doc = await wait_for_run(api, first)
        assert doc["state"] == "succeeded"
        assert _states(doc) == {
            "check": "succeeded",
            "pick": "succeeded",
            "full": "succeeded",
            "delta": "skipped",
            "notify": "skipped",
            "report": "succeeded",
        }
        delta = next(j for j in doc["jobs"] if j["id"] == "delta")
        assert delta["reason"] == "not run: branch pick did not take it"
        assert [e["detail"] for e in doc["events"]] == ["case 0 held (check exit 0) -> full"]

        # A warning exit (the branch tests it) and MODE=delta: the second case.
        second = (await api.call("run", jobnet="route", params={"MODE": "delta"}))["run"]
        assert await _next_job(agent, 4) == "check"
        await agent.run_job("check", exit_code=2)
        assert await _next_job(agent, 5) == "delta"
        await agent.run_job("delta")
        assert await _next_job(agent, 6) == "report"
        await agent.run_job("report")
        assert (await wait_for_run(api, second))["state"] == "succeeded"

        # No case holds: the else path; the join after two untaken paths is not taken either.
        third = (await api.call("run", jobnet="route", params={"MODE": "other"}))["run"]
        assert await _next_job(agent, 7) == "check"
        await agent.run_job("check", exit_code=1)
        assert await _next_job(agent, 8) == "notify"
        await agent.run_job("notify")
        doc = await wait_for_run(api, third)
    assert doc["state"] == "succeeded"
    assert _states(doc)["report"] == "skipped"
    assert next(j for j in doc["jobs"] if j["id"] == "report")["reason"] == "not run: the path to it was not taken"


def _loop_defs(agent: str) -> dict[str, Any]:
    return {
        "jobnet": {
            "body": {"params": {"I": "0"}, "job": [_job("step", agent, "${I}", sets=["DONE"])]},
            "poll": {
                "job": [
                    {
                        "id": "repeat",
                        "type": "loop",
                        "jobnet": "body",
                        "counter": "I",
                        "until": {"var": "DONE", "equals": "yes"},
                        "max": 5,
                        "sets": ["DONE"],
                    },
                    _job("after", agent, "${I}", "${DONE}", after=["repeat"]),
                ]
            },
            "thrice": {"job": [{"id": "three", "type": "loop", "jobnet": "body", "count": 3, "counter": "I"}]},
        }
    }


async def test_a_loop_repeats_its_body_with_a_counter_until_its_condition_or_count(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=_loop_defs(name))
        run = (await api.call("run", jobnet="poll"))["run"]
        await agent.wait_for(1)
        await agent.run_job("step", stdout=b"::ekiden-var DONE=no\n")
        await agent.wait_for(2)
        await agent.run_job("step", stdout=b"::ekiden-var DONE=yes\n")
        await agent.wait_for(3)
        assert [d.payload["argv"] for d in agent.dispatches] == [["step", "1"], ["step", "2"], ["after", "2", "yes"]]
        await agent.run_job("after")
        doc = await wait_for_run(api, run)
        assert doc["state"] == "succeeded"
        repeat = doc["jobs"][0]
        assert repeat["type"] == "loop"
        assert repeat["flow"]["iteration"] == 2
        assert repeat["flow"]["note"] == "until held after 2 iterations (${DONE} == 'yes')"
        assert repeat["variables"] == {"I": "2", "DONE": "yes"}
        children = [c["run"] for c in doc["children"]]
        assert children == repeat["flow"]["children"] and len(children) == 2
        child = await api.call("status", run=children[0])
        assert child["parent"] == {"run": run, "job": "repeat"}
        assert child["params"] == {"I": "1"}

        counted = (await api.call("run", jobnet="thrice"))["run"]
        for n in (4, 5, 6):
            await agent.wait_for(n)
            assert agent.dispatches[n - 1].payload["argv"] == ["step", str(n - 3)]
            await agent.run_job("step")
        doc = await wait_for_run(api, counted)
    assert doc["state"] == "succeeded"
    assert doc["jobs"][0]["flow"]["note"] == "3 iterations done"
    assert doc["variables"] == {"I": "3"}


def _nested_defs(agent: str) -> dict[str, Any]:
    return {
        "jobnet": {
            "inner": {
                "params": {"WHO": "nobody"},
                "job": [_job("greet", agent, "${WHO}", sets=["RESULT"]), _job("tidy", agent, after=["greet"])],
            },
            "outer": {
                "params": {"NAME": "ekiden"},
                "job": [
                    {
                        "id": "sub",
                        "type": "jobnet",
                        "jobnet": "inner",
                        "params": {"WHO": "${NAME}"},
                        "sets": ["RESULT"],
                    },
                    _job("use", agent, "${RESULT}", after=["sub"]),
                ],
            },
        }
    }


async def test_a_nested_jobnet_runs_as_a_child_run_with_parameters_in_and_variables_out(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=_nested_defs(name))
        run = (await api.call("run", jobnet="outer", params={"NAME": "relay race"}))["run"]
        await agent.wait_for(1)
        greet = agent.dispatch_of("greet")
        assert greet.payload["argv"] == ["greet", "relay race"]
        child = greet.run_id
        assert child != run
        middle = await api.call("status", run=run)
        assert _states(middle) == {"sub": "running", "use": "waiting"}
        assert middle["children"] == [{"run": child, "job": "sub"}]
        await agent.run_job("greet", stdout=b"::ekiden-var RESULT=hello relay race\n")
        await agent.wait_for(2)
        await agent.run_job("tidy")
        await agent.wait_for(3)
        assert agent.dispatch_of("use").payload["argv"] == ["use", "hello relay race"]
        await agent.run_job("use")
        doc = await wait_for_run(api, run)
        child_doc = await api.call("status", run=child)
        assert child_doc["state"] == "succeeded"
        assert child_doc["parent"] == {"run": run, "job": "sub"}
        assert child_doc["variables"] == {"WHO": "relay race", "RESULT": "hello relay race"}
        assert doc["state"] == "succeeded"
        assert doc["jobs"][0]["variables"] == {"RESULT": "hello relay race"}
        assert doc["jobs"][0]["reason"] == f"run {child} succeeded"

        # Killing the parent kills the child run; a failed child fails its unit.
        killed = (await api.call("run", jobnet="outer"))["run"]
        await agent.wait_for(4)
        grandchild = agent.dispatches[3].run_id
        await api.call("kill", run=killed)
        assert (await wait_for_run(api, killed))["state"] == "stopped"
        assert (await wait_for_run(api, grandchild))["state"] == "stopped"

        failing = (await api.call("run", jobnet="outer"))["run"]
        await agent.wait_for(5)
        await agent.run_job("greet", exit_code=3)
        doc = await wait_for_run(api, failing)
    assert doc["state"] == "failed"
    assert _states(doc) == {"sub": "failed", "use": "skipped"}


async def test_wait_info_and_end_units(site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str) -> None:
    name = f"a{uid}"
    defs = {
        "calendar": {"always": {"include": [{}]}},
        "jobnet": {
            "facts": {
                "job": [
                    {"id": "pause", "type": "wait", "for_s": 0.3},
                    {
                        "id": "facts",
                        "type": "info",
                        "after": ["pause"],
                        "calendar": "always",
                        "get": {"OPEN": "operating_day", "TODAY": "date", "RUN": "run_id"},
                    },
                    _job("use", name, "${OPEN}", "${TODAY}", "${RUN}", after=["facts"]),
                ]
            },
            "stop": {
                "job": [
                    _job("long", name),
                    _job("first", name),
                    {"id": "halt", "type": "end", "status": "failed", "message": "no data", "after": ["first"]},
                    _job("never", name, after=["long"]),
                ]
            },
        },
    }
    async with running_manager(site_dir, sid, nats_url, tick_s=TICK_S) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        started = time.time()
        run = (await api.call("run", jobnet="facts"))["run"]
        await agent.wait_for(1)
        assert time.time() - started >= 0.3
        argv = agent.dispatch_of("use").payload["argv"]
        assert argv == ["use", "true", time.strftime("%Y-%m-%d", time.gmtime()), run]
        await agent.run_job("use")
        doc = await wait_for_run(api, run)
        assert doc["state"] == "succeeded"
        assert _states(doc) == {"pause": "succeeded", "facts": "succeeded", "use": "succeeded"}

        stopped = (await api.call("run", jobnet="stop"))["run"]
        await agent.wait_for(3)
        long = agent.dispatch_of("long")
        await agent.report([event_for(long, Kind.STARTED, {"host": "h", "pid": 1}, time.time())])
        await asyncio.sleep(0.1)
        await agent.run_job("first")
        doc = await api.call("status", run=stopped)
        assert doc["state"] == "running", "the running job is killed first"
        await agent.run_job("long", exit_code=-9)
        doc = await wait_for_run(api, stopped)
    assert doc["state"] == "failed"
    assert doc["note"] == "ended failed by unit halt: no data"
    assert _states(doc) == {"long": "failed", "first": "succeeded", "halt": "succeeded", "never": "skipped"}


async def test_a_file_watch_is_a_call_job_on_its_agent(
    site_dir: Path, sid: str, nats_url: str, nc: Client, uid: str
) -> None:
    name = f"a{uid}"
    unit = {"id": "w", "type": "filewatch", "agent": name, "path": "/in/${DAY}.csv", "timeout_s": 60, "stable_s": 2}
    defs = {"jobnet": {"fw": {"params": {"DAY": "d1"}, "job": [unit]}}}
    async with running_manager(site_dir, sid, nats_url) as api, scripted_agent(nc, name) as agent:
        await api.call("apply", definitions=defs)
        run = (await api.call("run", jobnet="fw"))["run"]
        await agent.wait_for(1)
        payload = agent.dispatches[0].payload
        assert payload["call"] == FILEWATCH_CALL
        assert payload["args"] == {"path": "/in/d1.csv", "timeout_s": 60.0, "stable_s": 2.0, "poll_s": 1.0}
        await agent.run_job("w", stdout=b"::ekiden-var FILEWATCH_SIZE=10\n")
        doc = await wait_for_run(api, run)
    assert doc["state"] == "succeeded"
    assert doc["jobs"][0]["type"] == "filewatch"
    assert doc["variables"]["FILEWATCH_SIZE"] == "10"
