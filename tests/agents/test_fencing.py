"""Epoch fencing in the standard agent: dispatches from a manager that was replaced are refused."""

import asyncio
import time
from dataclasses import replace

from nats.aio.client import Client

from schemas import subjects
from schemas.codec import decode, encode, encode_one
from schemas.errors import ErrorCode
from schemas.messages import Envelope, Kind
from tests.agents.conftest import Spawn
from tests.agents.helpers import DEADLINE_S, EventSink, dispatch, spec


async def _dispatch(nc: Client, name: str, env: Envelope) -> dict[str, object]:
    reply = await nc.request(subjects.agent_run(name), encode([env]), timeout=DEADLINE_S)
    (ack,) = decode(reply.data)
    assert ack.kind == Kind.ACK
    return ack.payload


async def _until_answered(nc: Client, name: str, env: Envelope) -> dict[str, object]:
    """Send ``env`` until the agent answers (it is subscribed once it does)."""
    deadline = time.monotonic() + DEADLINE_S
    while True:
        try:
            return await _dispatch(nc, name, env)
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)


async def test_dispatches_below_the_highest_epoch_seen_are_refused(
    nc: Client, spawn: Spawn, sid: str, uid: str
) -> None:
    await EventSink.start(nc, subjects.events(sid))
    name = f"a{uid}"
    agent = spawn("--name", name, "--heartbeat-s", "0.5", "--grace", "1")
    current = replace(dispatch(sid, spec(sid, "a", argv=("true",))), epoch=3)
    assert (await _until_answered(nc, name, current))["accepted"] == [current.payload["attempt_id"]]

    old = replace(dispatch(sid, spec(sid, "b", argv=("true",))), epoch=2)
    ack = await _dispatch(nc, name, old)
    assert ack["accepted"] == []
    assert ack["refused"] == [
        {
            "attempt_id": old.payload["attempt_id"],
            "code": str(ErrorCode.CONFLICT),
            "reason": f"stale epoch 2 < 3 from server {sid}",
        }
    ]

    # A hello raises the mark too: a new manager took over at epoch 7.
    await nc.publish(subjects.hello(sid), encode_one(Envelope(Kind.HELLO, sid, {"epoch": 7}, epoch=7)))
    deadline = time.monotonic() + DEADLINE_S
    n = 0
    while True:  # the hello and the dispatches travel on different subscriptions: wait for it to land
        n += 1
        probe = replace(dispatch(sid, spec(sid, f"p{n}", argv=("true",))), epoch=3)
        if (await _dispatch(nc, name, probe))["refused"]:
            break
        assert time.monotonic() < deadline, "the hello's epoch was never applied"
        await asyncio.sleep(0.1)
    # Another server ID is fenced on its own.
    other = f"{sid}x"
    await EventSink.start(nc, subjects.events(other))
    elsewhere = replace(dispatch(other, spec(other, "c", argv=("true",))), epoch=1)
    assert (await _dispatch(nc, name, elsewhere))["accepted"] == [elsewhere.payload["attempt_id"]]
    agent.terminate()
    assert await agent.wait_exit() == 0
