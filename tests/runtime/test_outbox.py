"""The event outbox after a takeover: a ``hello`` does not wait for requests to a manager that died."""

import asyncio

from nats.aio.client import Client
from nats.aio.msg import Msg

from runtime.outbox import EventOutbox
from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.messages import Envelope, Kind, ack_for

#: Longer than any test runs: a request sent to the dead manager would hold its slot for all of it.
NEVER_S = 600.0


def _event(sid: str, eid: str) -> Envelope:
    return Envelope(Kind.FINISHED, sid, {"eid": eid, "attempt_id": f"{sid}:1:j:1"})


async def test_hello_resends_at_once_past_requests_still_waiting_on_a_dead_manager(nc: Client, uid: str) -> None:
    sids = [f"a{uid}", f"b{uid}"]
    # One batch per server ID: together they take every in-flight slot, and nobody ever answers them.
    silent = [await nc.subscribe(subjects.events(sid)) for sid in sids]
    outbox = EventOutbox(
        nc, route=lambda env: subjects.events(env.sid), resend_after_s=NEVER_S, request_timeout_s=NEVER_S
    )
    async with asyncio.TaskGroup() as tg:
        sending = tg.create_task(outbox.run())
        await outbox.put([_event(sid, f"e-{sid}") for sid in sids])
        for sub in silent:
            await sub.next_msg(timeout=10)  # the requests are out, and will never be answered
            await sub.unsubscribe()

        async def ack(msg: Msg) -> None:
            eids = [env.payload["eid"] for env in decode(msg.data)]
            await msg.respond(encode_one(ack_for(eids, "", 0.0)))

        for sid in sids:
            await nc.subscribe(subjects.events(sid), cb=ack)  # the new active manager
        outbox.resend_all()  # its hello
        async with asyncio.timeout(20):
            await outbox.wait_empty()
        sending.cancel()
    assert len(outbox) == 0
