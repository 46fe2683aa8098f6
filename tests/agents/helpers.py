"""Shared pieces of the agents tests: job specs, dispatch envelopes, a fake event receiver, agent processes."""

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from schemas.codec import decode, encode_one
from schemas.messages import Envelope, JobSpec, Kind, ack_for, attempt_id, job_run_id

#: Generous deadline for anything a test waits for (the machine is shared and noisy).
DEADLINE_S = 20.0
REPO = Path(__file__).resolve().parents[2]


def spec(sid: str, job: str, run_id: str = "r1", **fields: Any) -> JobSpec:
    """A job spec for attempt 1 of ``job`` in ``run_id``."""
    return JobSpec(attempt_id=attempt_id(sid, run_id, job, 1), job=job, jobnet="net", **fields)


def dispatch(sid: str, job_spec: JobSpec, run_id: str = "r1") -> Envelope:
    """The dispatch envelope a manager would send for ``job_spec``."""
    return Envelope(
        kind=Kind.DISPATCH,
        sid=sid,
        payload=job_spec.to_wire(),
        epoch=1,
        run_id=run_id,
        job_run_id=job_run_id(run_id, job_spec.job),
        attempt=1,
        tenant="t1",
        ts=time.time(),
    )


class EventSink:
    """Plays the receiver of events (a manager or a relay): records every envelope and acks it.

    It consumes through a nats-py callback, so it keeps acking after the test body ends, while agent
    processes drain at teardown, until the test's client is drained.
    """

    def __init__(self) -> None:
        self.events: list[Envelope] = []
        self.errors: list[BaseException] = []
        self._changed = asyncio.Event()

    @classmethod
    async def start(cls, nc: Client, subject: str) -> "EventSink":
        """A sink subscribed to ``subject``."""
        sink = cls()
        await nc.subscribe(subject, cb=sink._take)
        return sink

    async def _take(self, msg: Msg) -> None:
        try:
            envs = decode(msg.data)
            self.events.extend(envs)
            await msg.respond(encode_one(ack_for([e.payload["eid"] for e in envs], envs[0].sid, time.time())))
        except Exception as exc:  # surfaced by wait_for: a callback's errors would go nowhere else
            self.errors.append(exc)
        self._changed.set()

    def of(self, attempt: str, kind: Kind | None = None) -> list[Envelope]:
        """Events about ``attempt`` (of one kind)."""
        return [e for e in self.events if e.payload.get("attempt_id") == attempt and (kind is None or e.kind == kind)]

    async def wait_for(self, check: Callable[[], bool], what: str, timeout_s: float = DEADLINE_S) -> None:
        """Wait until ``check()`` holds."""
        try:
            async with asyncio.timeout(timeout_s):
                while not check() and not self.errors:
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"timed out waiting for {what}; events: {[(e.kind, e.payload.get('eid')) for e in self.events]}"
            ) from None

    async def finished(self, attempt: str, timeout_s: float = DEADLINE_S) -> Envelope:
        """The first FINISHED event of ``attempt``, waited for."""
        await self.wait_for(lambda: bool(self.of(attempt, Kind.FINISHED)), f"{attempt} to finish", timeout_s)
        return self.of(attempt, Kind.FINISHED)[0]


class AgentProcess:
    """A real ``python -m agents`` process, its output in a log file."""

    def __init__(self, args: list[str], log_path: Path) -> None:
        self.log_path = log_path
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "agents", *args],
            cwd=REPO,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def log(self) -> str:
        """Everything the process logged so far."""
        return self.log_path.read_text(errors="replace")

    def terminate(self) -> None:
        """Send SIGTERM."""
        self.proc.send_signal(signal.SIGTERM)

    async def wait_exit(self, timeout_s: float = DEADLINE_S) -> int:
        """The exit status, waited for without blocking the loop."""
        deadline = time.monotonic() + timeout_s
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"agent did not exit within {timeout_s} s; log:\n{self.log()}")
            await asyncio.sleep(0.05)
        return self.proc.returncode

    async def stop(self) -> None:
        """Stop the process if it still runs (SIGTERM, so its jobs die with it, then SIGKILL); close the log."""
        if self.proc.poll() is None:
            self.terminate()
            try:
                await self.wait_exit()
            except AssertionError:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie waiting for a reaper counts as dead)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in {"Z", "X"}


async def wait_dead(pid: int, timeout_s: float = DEADLINE_S) -> bool:
    """Wait for ``pid`` to be gone; tell whether it is."""
    deadline = time.monotonic() + timeout_s
    while alive(pid):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.05)
    return True
