"""The janitor kills an agent's jobs when the agent dies without doing it (SIGKILL), and only those."""

import asyncio
import os
import signal
import subprocess
from pathlib import Path

from nats.aio.client import Client

from agents.janitor import Janitor
from runtime.bus import subscribe
from schemas import subjects
from schemas.codec import decode, encode
from schemas.messages import Kind
from tests.agents.conftest import Spawn
from tests.agents.helpers import DEADLINE_S, EventSink, alive, dispatch, spec, wait_dead


def _group(tmp_path: Path, name: str) -> subprocess.Popen[bytes]:
    """A process group like a job's: a shell leading a background child that records its PID."""
    script = f"sleep 300 & echo $! > {tmp_path / name}; wait"
    return subprocess.Popen(["sh", "-c", script], start_new_session=True)


def _read_pid(path: Path) -> int | None:
    text = path.read_text().strip() if path.exists() else ""
    return int(text) if text else None


async def _pid_in(path: Path) -> int:
    async with asyncio.timeout(DEADLINE_S):
        while True:
            pid = _read_pid(path)
            if pid is not None:
                return pid
            await asyncio.sleep(0.02)


async def test_when_its_pipe_closes_the_janitor_kills_the_groups_still_listed(tmp_path: Path) -> None:
    janitor = Janitor()
    listed, forgotten = _group(tmp_path, "listed"), _group(tmp_path, "forgotten")
    try:
        janitor.watch(listed.pid)
        janitor.watch(forgotten.pid)
        janitor.forget(forgotten.pid)
        children = [await _pid_in(tmp_path / "listed"), await _pid_in(tmp_path / "forgotten")]
        janitor.close()  # what the agent's death does
        assert await wait_dead(children[0]), "a listed group's child outlived the janitor"
        assert listed.wait(DEADLINE_S) == -signal.SIGKILL
        assert alive(children[1]) and forgotten.poll() is None
    finally:
        for proc in (listed, forgotten):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        for child in ("listed", "forgotten"):
            pid = _read_pid(tmp_path / child)
            if pid is not None and alive(pid):
                os.kill(pid, signal.SIGKILL)


async def test_a_sigkilled_agent_leaves_no_job_process_behind(
    nc: Client, spawn: Spawn, sid: str, uid: str, tmp_path: Path
) -> None:
    name = f"a{uid}"
    manager = await EventSink.start(nc, subjects.events(sid))
    reg = await subscribe(nc, subjects.agent_heartbeat(name))
    agent = spawn("--name", name, "--heartbeat-s", "0.5")
    async with asyncio.timeout(DEADLINE_S):
        await reg.next_msg(timeout=DEADLINE_S)
    pidfile = tmp_path / "child.pid"
    long = spec(sid, "long", argv=("sh", "-c", f"sleep 300 & echo $! > {pidfile}; wait"))
    reply = await nc.request(subjects.agent_run(name), encode([dispatch(sid, long)]), timeout=DEADLINE_S)
    assert decode(reply.data)[0].kind == Kind.ACK
    child = await _pid_in(pidfile)
    await manager.wait_for(lambda: bool(manager.of(long.attempt_id, Kind.STARTED)), "long to start")
    agent.proc.send_signal(signal.SIGKILL)
    assert await agent.wait_exit() == -signal.SIGKILL
    try:
        assert await wait_dead(child), "the job's process outlived its SIGKILLed agent"
    finally:
        if alive(child):
            os.kill(child, signal.SIGKILL)
