"""Relay test helpers: the relay as a real subprocess, and the test acting as manager and worker."""

import asyncio
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from schemas import subjects
from schemas.codec import decode, encode, encode_one
from schemas.messages import Envelope, JobSpec, Kind, ack_for, attempt_id, job_run_id

#: Generous deadline, in seconds, for anything the relay should do (the machine is shared and noisy).
DEADLINE_S = 20.0
#: Repository root, the relay subprocess's working directory.
_ROOT = Path(__file__).resolve().parents[2]


@dataclass
class RelayProcess:
    """``python -m relay`` as a subprocess, its log in a file beside its database."""

    name: str
    nats_url: str
    db: Path
    downstream_url: str | None = None
    extra: list[str] = field(default_factory=list)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def log(self) -> Path:
        return self.db.with_suffix(".log")

    def start(self) -> None:
        args = [sys.executable, "-m", "relay", "--name", self.name, "--nats", self.nats_url, "--db", str(self.db)]
        if self.downstream_url is not None:
            args += ["--downstream", self.downstream_url]
        env = {k: v for k, v in os.environ.items() if not k.startswith("EKIDEN_")}
        env["EKIDEN_LOG_LEVEL"] = "DEBUG"
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                [*args, *self.extra], cwd=_ROOT, env=env, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )

    def send(self, sig: signal.Signals) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = DEADLINE_S) -> int:
        """Wait for the process to exit and return its status."""
        assert self.proc is not None
        return await asyncio.to_thread(self.proc.wait, timeout_s)

    async def kill(self) -> None:
        """SIGKILL, as a crash would."""
        self.send(signal.SIGKILL)
        await self.wait()

    def stop(self) -> None:
        """Teardown: make sure nothing outlives the test."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def free_port() -> int:
    """A loopback port with nothing listening on it (for a NATS server that is not up yet)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def dispatch(sid: str, relay: str, dest: str, job: str, run_id: str = "r1", attempt: int = 1) -> Envelope:
    """A DISPATCH envelope for a flexible job, as the manager builds it."""
    spec = JobSpec(
        attempt_id=attempt_id(sid, run_id, job, attempt),
        job=job,
        jobnet="net",
        argv=("true",),
        dest=dest,
        relay=relay,
    )
    return Envelope(
        Kind.DISPATCH,
        sid,
        spec.to_wire(),
        epoch=1,
        run_id=run_id,
        job_run_id=job_run_id(run_id, job),
        attempt=attempt,
        tenant="t",
        ts=time.time(),
    )


async def request(nc: Client, subject: str, body: bytes, timeout_s: float = 5.0) -> list[Envelope]:
    """One request; the decoded reply."""
    msg = await nc.request(subject, body, timeout=timeout_s)
    return decode(msg.data)


async def send_dispatches(nc: Client, relay: str, envs: list[Envelope]) -> dict[str, Any]:
    """Send a dispatch batch as the manager does; return the ACK payload."""
    (reply,) = await request(nc, subjects.relay_run(relay), encode(envs))
    assert reply.kind == Kind.ACK, reply
    return reply.payload


async def send_events(nc: Client, relay: str, envs: list[Envelope]) -> list[str]:
    """Send events as a destination worker does; return the acked event IDs."""
    (reply,) = await request(nc, subjects.relay_events(relay), encode(envs))
    assert reply.kind == Kind.ACK, reply
    eids = reply.payload["eids"]
    assert isinstance(eids, list)
    return eids


async def eventually(probe: Callable[[], Awaitable[bool]], what: str, deadline_s: float = DEADLINE_S) -> None:
    """Retry ``probe`` until it returns True; fail naming ``what`` after the deadline."""
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if await probe():
            return
        await asyncio.sleep(0.05)
    pytest.fail(f"not within {deadline_s}s: {what}")


async def wait_ready(nc: Client, subject: str) -> None:
    """Wait until the relay answers on ``subject`` (a harmless HELLO envelope gets an empty ACK)."""
    probe_body = encode_one(Envelope(Kind.HELLO, "probe"))

    async def answers() -> bool:
        try:
            (reply,) = await request(nc, subject, probe_body, timeout_s=1.0)
        except (NoRespondersError, NatsTimeoutError):
            return False
        return reply.kind == Kind.ACK

    await eventually(answers, f"relay answering on {subject}")


class Manager:
    """The test acting as the manager of one server ID: collects events, acks them or not."""

    def __init__(self, sub: Subscription) -> None:
        self.sub = sub

    async def next_events(self, timeout_s: float = DEADLINE_S) -> tuple[Msg, list[Envelope]]:
        """The next batch the relay sent (not acked yet)."""
        msg = await self.sub.next_msg(timeout=timeout_s)
        return msg, decode(msg.data)

    @staticmethod
    async def ack(msg: Msg, envs: list[Envelope]) -> None:
        eids = [e.payload["eid"] for e in envs]
        await msg.respond(encode_one(ack_for(eids, envs[0].sid, time.time())))
