"""A manager running inside the test's event loop, and a scripted standard agent to drive it."""

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from ekiden.client import ApiClient, Endpoint
from engine.service import serve
from engine.settings import ManagerSettings
from runtime.bus import BusSettings
from schemas import subjects
from schemas.codec import decode, encode, encode_one
from schemas.messages import Envelope, Finished, JobStatus, Kind, event_for


@asynccontextmanager
async def running_manager(site: Path, sid: str, nats_url: str, **overrides: Any) -> AsyncIterator[ApiClient]:
    """Run a manager in this loop until the block ends; yield an API client that reaches it."""
    settings = ManagerSettings(site_dir=site, server_id=sid, bus=BusSettings(url=nats_url), **overrides)
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(serve(settings, stop))
        client = await ApiClient.connect(Endpoint(nats_url, sid), timeout_s=10)
        try:
            await wait_for_manager(client)
            yield client
        finally:
            await client.close()
            stop.set()
    assert task.done()


async def wait_for_manager(client: ApiClient, timeout_s: float = 20.0) -> dict[str, Any]:
    """Ping until the active manager answers."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            result: dict[str, Any] = await client.call("ping")
            return result
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


async def wait_for_run(client: ApiClient, run_id: str, timeout_s: float = 30.0) -> dict[str, Any]:
    """Poll the status until the run ends (tests only: the CLI follows pushed updates)."""
    deadline = time.monotonic() + timeout_s
    while True:
        doc: dict[str, Any] = await client.call("status", run=run_id)
        if doc["state"] != "running":
            return doc
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still running: {doc}")
        await asyncio.sleep(0.05)


@dataclass
class ScriptedAgent:
    """Plays a standard agent: accepts every dispatch, remembers it, and reports what the test says."""

    nc: Client
    name: str
    dispatches: list[Envelope] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def handle(self, msg: Msg) -> None:
        envs = decode(msg.data)
        self.dispatches.extend(envs)
        self.arrived.set()
        accepted = [e.payload["attempt_id"] for e in envs]
        await msg.respond(encode_one(Envelope(Kind.ACK, envs[0].sid, {"accepted": accepted, "refused": []})))

    async def wait_for(self, count: int, timeout_s: float = 10.0) -> list[Envelope]:
        async with asyncio.timeout(timeout_s):
            while len(self.dispatches) < count:
                self.arrived.clear()
                await self.arrived.wait()
        return self.dispatches

    async def wait_for_run(self, run_id: str, timeout_s: float = 10.0) -> Envelope:
        """The first dispatch of a job of ``run_id``, once it arrives."""
        async with asyncio.timeout(timeout_s):
            while not any(d.run_id == run_id for d in self.dispatches):
                self.arrived.clear()
                await self.arrived.wait()
        return next(d for d in self.dispatches if d.run_id == run_id)

    def dispatch_of(self, job: str) -> Envelope:
        return next(e for e in reversed(self.dispatches) if e.payload["job"] == job)

    async def report(self, events: list[Envelope]) -> list[str]:
        """Send events as the agent's outbox would and return the acked event IDs."""
        sid = events[0].sid
        reply = await self.nc.request(subjects.events(sid), encode(events), timeout=10)
        ack = decode(reply.data)[0]
        assert ack.kind == Kind.ACK, ack
        return list(ack.payload["eids"])

    async def run_job(self, job: str, exit_code: int = 0, stdout: bytes = b"") -> list[str]:
        """Report one dispatched job as started and finished with ``exit_code``."""
        d = self.dispatch_of(job)
        status = JobStatus.SUCCEEDED if exit_code == 0 else JobStatus.FAILED
        fin = Finished(d.payload["attempt_id"], status, exit_code, stdout=stdout, host="test-host")
        return await self.report(
            [
                event_for(d, Kind.STARTED, {"host": "test-host", "pid": 4242, "worker": self.name}, time.time()),
                event_for(d, Kind.FINISHED, fin.to_wire(), time.time()),
            ]
        )


@asynccontextmanager
async def scripted_agent(nc: Client, name: str) -> AsyncIterator[ScriptedAgent]:
    """A scripted agent subscribed to its dispatch subject for the block."""
    agent = ScriptedAgent(nc, name)
    sub = await nc.subscribe(subjects.agent_run(name), cb=agent.handle)
    try:
        yield agent
    finally:
        await sub.unsubscribe()


def chain_definitions(agent: str, names: list[str], jobnet: str = "chain") -> dict[str, Any]:
    """A jobnet whose jobs run one after another on one agent."""
    jobs: list[dict[str, Any]] = []
    for i, name in enumerate(names):
        job: dict[str, Any] = {"id": name, "cmd": ["true"], "agent": agent}
        if i:
            job["after"] = [names[i - 1]]
        jobs.append(job)
    return {"jobnet": {jobnet: {"job": jobs}}}
