"""A destination worker announces itself on its destination's heartbeat subject while it runs."""

import asyncio

from nats.aio.client import Client

from runtime.bus import subscribe
from schemas import subjects
from schemas.codec import decode
from schemas.messages import Kind
from tests.agents.conftest import Spawn
from tests.agents.helpers import DEADLINE_S


async def test_worker_heartbeats_its_presence_and_says_when_it_leaves(nc: Client, spawn: Spawn, uid: str) -> None:
    dest = f"d{uid}"
    beats = await subscribe(nc, subjects.dest_heartbeat(dest))
    worker = spawn("--dest", dest, "--name", f"w{uid}", "--concurrency", "3", "--heartbeat-s", "0.2")
    seen = []
    async with asyncio.timeout(DEADLINE_S):
        async for msg in beats.messages:
            (env,) = decode(msg.data)
            seen.append(env)
            if len(seen) == 3:
                break
    for env in seen:
        assert env.kind == Kind.REGISTER
        p = env.payload
        assert {k: p[k] for k in ("name", "kind", "dest", "slots", "running", "heartbeat_s", "leaving")} == {
            "name": f"w{uid}",
            "kind": "worker",
            "dest": dest,
            "slots": 3,
            "running": 0,
            "heartbeat_s": 0.2,
            "leaving": False,
        }
        assert p["host"] and p["version"]
    worker.terminate()
    assert await worker.wait_exit() == 0, worker.log()
    async with asyncio.timeout(DEADLINE_S):
        async for msg in beats.messages:
            if decode(msg.data)[0].payload["leaving"]:
                break
    await beats.unsubscribe()
    await nc.jetstream().delete_stream(subjects.dest_stream(dest))
