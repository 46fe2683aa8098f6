"""Operating running work with the ekiden command on the real stack: kill, rerun, exit codes, audit."""

import asyncio
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from ekiden.client import ApiClient
from ekiden.up import Stack, StackPlan
from tests.agents.helpers import alive
from tests.engine.helpers import wait_for_run
from tests.shell import wait_for_file

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
async def stack(tmp_path: Path) -> AsyncIterator[tuple[Stack, ApiClient]]:
    """The embedded stack: relay 'main', two workers of destination 'cloud', agent 'local'."""
    st = Stack(tmp_path / "site")
    try:
        await st.start(StackPlan(relays=("main",), destinations=("cloud",), agents=("local",)))
        client = await ApiClient.connect(st.endpoint, timeout_s=20)
        try:
            yield st, client
        finally:
            await client.close()
    finally:
        await st.stop()


async def ekiden(st: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the ekiden command against the stack, as an operator would."""
    argv = [sys.executable, "-m", "ekiden", *args, "--nats", st.endpoint.nats_url, "--site", str(st.site)]
    return await asyncio.to_thread(subprocess.run, argv, cwd=REPO, capture_output=True, text=True, timeout=120)


async def _first_run(client: ApiClient, jobnet: str, timeout_s: float = 30) -> str:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        runs = await client.call("runs", jobnet=jobnet, limit=1)
        if runs:
            return str(runs[0]["run"])
        await asyncio.sleep(0.1)
    raise AssertionError(f"no run of {jobnet} started")


async def _job_state(client: ApiClient, run: str, job: str, want: str, timeout_s: float = 30) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while True:
        doc = await client.call("status", run=run)
        found: dict[str, Any] = next(j for j in doc["jobs"] if j["id"] == job)
        if found["state"] == want or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.1)


async def test_kill_reaches_a_worker_behind_the_relay_and_leaves_no_process(
    stack: tuple[Stack, ApiClient], tmp_path: Path
) -> None:
    st, client = stack
    pidfile = tmp_path / "child.pid"
    long = f"sleep 300 & echo $! > {pidfile}; wait"
    defs = {
        "destination": {"cloud": {}},
        "jobnet": {
            "k": {
                "job": [
                    {"id": "long", "cmd": long, "shell": True, "dest": "cloud"},
                    {"id": "after", "cmd": ["true"], "dest": "cloud", "after": ["long"]},
                ]
            }
        },
    }
    await client.call("apply", definitions=defs)
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(ekiden(st, "run", "k", "--wait"))
        run = await _first_run(client, "k")
        assert (await _job_state(client, run, "long", "running"))["state"] == "running"
        for _ in range(100):
            if pidfile.exists() and pidfile.read_text().strip():
                break
            await asyncio.sleep(0.05)
        child = int(pidfile.read_text())
        assert alive(child)
        killed = await ekiden(st, "kill", run, "long")
        assert killed.returncode == 0, killed.stderr
        doc = await wait_for_run(client, run, timeout_s=30)
    assert [(j["id"], j["state"]) for j in doc["jobs"]] == [("long", "killed"), ("after", "skipped")]
    assert waiting.result().returncode == 1  # the run failed
    for _ in range(50):
        if not alive(child):
            break
        await asyncio.sleep(0.1)
    assert not alive(child), "the killed job's child process is still running"


async def test_rerun_from_a_failed_job_and_the_exit_code_table(stack: tuple[Stack, ApiClient], tmp_path: Path) -> None:
    st, client = stack
    mark = tmp_path / "fixed"
    defs = {
        "jobnet": {
            "fix": {
                "job": [
                    {"id": "a", "cmd": ["true"], "agent": "local"},
                    {"id": "b", "cmd": ["test", "-e", str(mark)], "agent": "local", "after": ["a"]},
                    {"id": "c", "cmd": ["true"], "agent": "local", "after": ["b"]},
                ]
            },
            "held": {"job": [{"id": "x", "cmd": ["true"], "agent": "local"}]},
        }
    }
    await client.call("apply", definitions=defs)
    failed = await ekiden(st, "run", "fix", "--wait", "--json")
    assert failed.returncode == 1, failed.stderr
    run = (await client.call("runs", jobnet="fix", limit=1))[0]["run"]
    mark.touch()  # the operator fixes what b needed
    rerun = await ekiden(st, "rerun", run, "--from", "b")
    assert rerun.returncode == 0, rerun.stderr
    assert "running again b, c" in rerun.stdout
    doc = await wait_for_run(client, run, timeout_s=30)
    assert doc["state"] == "succeeded"
    assert [(j["id"], j["attempts"]) for j in doc["jobs"]] == [("a", 1), ("b", 2), ("c", 1)]
    timed_out = await ekiden(st, "run", "held", "--hold", "--wait", "--timeout-s", "1")
    assert timed_out.returncode == 4
    refused = await ekiden(st, "skip", run, "nope")
    assert refused.returncode == 2
    assert "no job 'nope'" in refused.stderr
    audit = await ekiden(st, "audit", "--json")
    actions = [(a["action"], a["outcome"].split(":")[0]) for a in orjson.loads(audit.stdout)]
    assert ("rerun", "ok") in actions
    assert ("skip", "refused") in actions
    assert ("run", "ok") in actions


async def test_logs_follow_prints_the_output_so_far_then_as_it_comes(
    stack: tuple[Stack, ApiClient], tmp_path: Path
) -> None:
    st, client = stack
    wrote, mark = tmp_path / "wrote", tmp_path / "seen"
    # The job writes before anyone follows, then waits until the test saw that on 'logs --follow': it
    # can only end if the follower was sent the output so far, and 'late' must then come live.
    script = f"echo early; echo warn >&2; touch {wrote}; {wait_for_file(str(mark))}; echo late; echo last >&2"
    defs = {"jobnet": {"talk": {"job": [{"id": "t", "cmd": script, "shell": True, "dest": "cloud"}]}}}
    await client.call("apply", definitions=defs)
    run = (await client.call("run", jobnet="talk"))["run"]
    assert (await _job_state(client, run, "t", "running"))["state"] == "running"
    for _ in range(200):
        if wrote.exists():
            break
        await asyncio.sleep(0.05)
    argv = [sys.executable, "-m", "ekiden", "logs", run, "t", "--follow", "--nats", st.endpoint.nats_url]
    argv += ["--site", str(st.site)]
    proc = await asyncio.create_subprocess_exec(
        *argv, cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert proc.stdout is not None
    async with asyncio.timeout(60):
        first = await proc.stdout.readline()
        mark.touch()
        rest, err = await proc.communicate()
    assert first == b"early\n"
    assert rest == b"late\n"
    assert proc.returncode == 0, err
    assert err.index(b"warn") < err.index(b"last") < err.index(b"(t succeeded)")
    assert b"not shown" not in err
    assert (await wait_for_run(client, run))["state"] == "succeeded"
