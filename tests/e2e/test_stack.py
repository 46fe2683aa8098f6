"""The whole stack as real processes: nats-server, manager, relay, workers and a standard agent."""

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from ekiden.client import ApiClient
from ekiden.up import Stack, StackPlan
from schemas import subjects
from schemas.codec import encode_one
from schemas.messages import Envelope, Kind
from tests.engine.helpers import wait_for_run

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, ApiClient]]:
    """The embedded stack with one relay, two workers of destination 'cloud' and agent 'local'.

    Without NATS credentials, so one client can reach every subject (the secured stack is test_security's).
    """
    stack = Stack(tmp_path / "site", secure=False)
    plan = StackPlan(relays=("main",), destinations=("cloud",), agents=("local",))
    try:
        await stack.start(plan)
        client = await ApiClient.connect(stack.endpoint, timeout_s=20)
        try:
            yield stack, client
        finally:
            await client.close()
    finally:
        await stack.stop()


def test_quickstart_runs_the_example_with_live_progress(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "ekiden", "up", "--run", "hello", "--site", str(tmp_path / "site")],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for job in ["prepare", "extract-sales", "extract-ga", "transform", "report"]:
        assert f"{job:<24} running" in proc.stdout
        assert f"{job:<24} succeeded" in proc.stdout
    assert "run 1 succeeded" in proc.stdout
    assert not (tmp_path / "site" / "endpoint.json").exists()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie waiting for its parent counts as gone.
    try:
        return Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z"
    except FileNotFoundError:
        return False


async def test_failure_blocks_dependants_and_timeout_kills_the_process_group(
    stack: tuple[Stack, ApiClient], tmp_path: Path
) -> None:
    _, client = stack
    pidfile = tmp_path / "grandchild.pid"
    defs: dict[str, Any] = {
        "destination": {"cloud": {"relay": "main"}},
        "jobnet": {
            "rough": {
                "job": [
                    {"id": "ok", "call": "examples.jobs:noop", "dest": "cloud"},
                    {
                        "id": "boom",
                        "cmd": ["sh", "-c", "echo about to fail >&2; exit 7"],
                        "agent": "local",
                        "after": ["ok"],
                    },
                    {"id": "never", "cmd": ["true"], "agent": "local", "after": ["boom"]},
                    {
                        "id": "slow",
                        "cmd": ["sh", "-c", f"sleep 300 & echo $! > {pidfile}; sleep 300"],
                        "dest": "cloud",
                        "timeout_s": 1,
                    },
                    {"id": "side", "cmd": ["true"], "dest": "cloud", "after": ["ok"]},
                ]
            }
        },
    }
    await client.call("apply", definitions=defs)
    run = (await client.call("run", jobnet="rough"))["run"]
    doc = await wait_for_run(client, run, timeout_s=60)
    states = {j["id"]: (j["state"], j["exit_code"]) for j in doc["jobs"]}
    assert doc["state"] == "failed"
    assert states["ok"] == ("succeeded", 0)
    assert states["side"] == ("succeeded", 0)
    assert states["boom"] == ("failed", 7)
    assert states["never"] == ("skipped", None)
    assert states["slow"][0] == "timed_out"
    logs = await client.call("logs", run=run, job="boom")
    assert logs["stderr"] == b"about to fail\n"
    grandchild = int(pidfile.read_text())
    for _ in range(50):
        if not _alive(grandchild):
            break
        await asyncio.sleep(0.1)
    assert not _alive(grandchild), "the timed-out job's background child was left running"


async def test_garbage_on_every_subject_leaves_every_process_serving(stack: tuple[Stack, ApiClient]) -> None:
    st, client = stack
    nc = client.nc
    garbage = [b"", b"\xc1", b"\x92\x01", b"\x91" * 10_000, os.urandom(700), b"\xdd\xff\xff\xff\xff"]
    wrong = encode_one(Envelope(Kind.DISPATCH, "main", {"attempt_id": 1, "job": None}))
    truncated = encode_one(Envelope(Kind.FINISHED, "main", {"eid": "x", "attempt_id": "y"}))[:-4]
    targets = [
        subjects.events("main"),
        subjects.api("main", "run"),
        subjects.api("main", "status"),
        subjects.hello("main"),
        subjects.relay_run("main"),
        subjects.relay_events("main"),
        subjects.agent_run("local"),
        subjects.control("dest:cloud", "main:1:x:1"),
        subjects.agent_heartbeat("local"),
        subjects.dest_run("cloud"),
    ]
    js = nc.jetstream()
    for subject in targets:
        for body in [*garbage, wrong, truncated]:
            if subject == subjects.dest_run("cloud"):
                await js.publish(subject, body)
            else:
                await nc.publish(subject, body)
    await nc.flush()
    await client.call("apply", definitions={"destination": {"cloud": {}}, "jobnet": _fan("cloud", "local")})
    run = (await client.call("run", jobnet="fan"))["run"]
    doc = await wait_for_run(client, run, timeout_s=60)
    assert doc["state"] == "succeeded"
    dead = [name for name, _, proc in st.procs if proc.returncode is not None]
    assert dead == []


def _fan(dest: str, agent: str) -> dict[str, Any]:
    jobs: list[dict[str, Any]] = [{"id": "start", "cmd": ["true"], "agent": agent}]
    jobs += [{"id": f"w{i}", "call": "examples.jobs:noop", "dest": dest, "after": ["start"]} for i in range(20)]
    jobs.append({"id": "join", "cmd": ["true"], "agent": agent, "after": [f"w{i}" for i in range(20)]})
    return {"fan": {"job": jobs}}


async def test_broadcast_to_three_real_agents_one_failing(tmp_path: Path) -> None:
    stack = Stack(tmp_path / "site", secure=False)
    plan = StackPlan(relays=("main",), destinations=(), agents=("a1", "a2", "a3"))
    defs = {
        "group": {"trio": {"agents": ["a1", "a2", "a3"]}},
        "jobnet": {
            "all": {
                "job": [
                    # Every member runs it; on a2 it fails with exit 5 (the job knows where it runs).
                    {
                        "id": "each",
                        "cmd": 'test "$EKIDEN_AGENT" != a2 || exit 5',
                        "shell": True,
                        "group": "trio",
                        "broadcast": True,
                    },
                    {"id": "after", "cmd": ["true"], "agent": "a1", "after": ["each"]},
                ]
            }
        },
    }
    try:
        await stack.start(plan)
        client = await ApiClient.connect(stack.endpoint, timeout_s=20)
        try:
            await client.call("apply", definitions=defs)
            run = (await client.call("run", jobnet="all"))["run"]
            doc = await wait_for_run(client, run, timeout_s=60)
        finally:
            await client.close()
    finally:
        await stack.stop()
    each, after = doc["jobs"]
    assert doc["state"] == "failed"
    assert (each["state"], each["exit_code"], each["target"]) == ("failed", 5, "group:trio")
    assert [(m["agent"], m["state"], m["exit_code"]) for m in each["members"]] == [
        ("a1", "succeeded", 0),
        ("a2", "failed", 5),
        ("a3", "succeeded", 0),
    ]
    assert after["state"] == "skipped"
