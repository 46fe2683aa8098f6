"""The relay's side of flexible jobs in real clouds: queued acks, epoch fencing, failover, pass-through acks."""

import asyncio
from collections.abc import Callable
from dataclasses import replace

from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.errors import TimeoutError as NatsTimeoutError

from schemas import subjects
from schemas.codec import decode, encode, encode_one
from schemas.errors import ErrorCode
from schemas.messages import Envelope, Kind
from tests.relay.helpers import (
    DEADLINE_S,
    Manager,
    RelayProcess,
    dispatch,
    eventually,
    free_port,
    send_dispatches,
    wait_ready,
)
from tests.relay.test_relay import ids, pull, stream_messages, worker_events

StartRelay = Callable[..., RelayProcess]


async def test_forwarded_dispatches_are_named_queued_and_a_resend_is_queued_at_once(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    # A long bound: the PubAcks come long before it, so the answer names every job queued.
    relays(name, nats_url, extra=["--queued-wait-s", "10"])
    await wait_ready(nc, subjects.relay_run(name))
    jobs = [dispatch(sid, name, dest, f"j{i}") for i in range(5)]

    ack = await send_dispatches(nc, name, jobs)
    assert ack["accepted"] == ack["queued"] == ids(jobs)
    assert ack["refused"] == []

    again = await send_dispatches(nc, name, jobs[:2])  # the manager's resend: answered, not forwarded twice
    assert again["accepted"] == again["queued"] == ids(jobs[:2])
    await pull(nc, dest, len(jobs))


async def test_with_the_destinations_unreachable_jobs_are_accepted_but_not_queued(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    relays(name, nats_url, downstream_url=f"nats://127.0.0.1:{free_port()}", extra=["--queued-wait-s", "0.2"])
    await wait_ready(nc, subjects.relay_run(name))
    job = dispatch(sid, name, dest, "j")
    for _ in range(2):
        ack = await send_dispatches(nc, name, [job])
        assert (ack["accepted"], ack["queued"]) == (ids([job]), [])


async def test_a_dispatch_from_a_stale_epoch_is_refused_with_the_reason(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    relays(name, nats_url)
    await wait_ready(nc, subjects.relay_run(name))
    current = replace(dispatch(sid, name, dest, "a"), epoch=4)
    assert (await send_dispatches(nc, name, [current]))["accepted"] == ids([current])

    stale = replace(dispatch(sid, name, dest, "b"), epoch=3)
    ack = await send_dispatches(nc, name, [stale, current])
    assert ack["accepted"] == ids([current])
    assert ack["refused"] == [
        {
            "attempt_id": stale.payload["attempt_id"],
            "code": str(ErrorCode.CONFLICT),
            "reason": f"stale epoch 3 < 4 from server {sid}",
        }
    ]
    # A hello from a new manager raises the mark for every relay that hears it.
    await nc.publish(subjects.hello(sid), encode_one(Envelope(Kind.HELLO, sid, {"epoch": 9}, epoch=9)))
    n = 0

    async def fenced() -> bool:
        nonlocal n
        n += 1
        probe = replace(dispatch(sid, name, f"probe{uid}", f"p{n}"), epoch=4)
        return bool((await send_dispatches(nc, name, [probe]))["refused"])

    await eventually(fenced, "the hello's epoch applied")
    (msg,) = await pull(nc, dest, 1)  # the stale one was not forwarded
    assert decode(msg.data) == [current]


async def test_a_relay_that_never_saw_a_resent_dispatch_takes_it_and_jetstream_keeps_one_copy(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    first = relays(name, nats_url)
    await wait_ready(nc, subjects.relay_run(name))
    job = dispatch(sid, name, dest, "j")
    assert (await send_dispatches(nc, name, [job]))["accepted"] == ids([job])
    await eventually(lambda: _holds(nc, dest, 1), "the job in the stream")
    await first.kill()

    relays(name, nats_url, db=first.db.with_name("other.db"))  # another host: its own, empty database
    await wait_ready(nc, subjects.relay_run(name))
    ack = await send_dispatches(nc, name, [job])  # the manager's watchdog resends under the same attempt ID
    assert ack["accepted"] == ack["queued"] == ids([job])
    (msg,) = await pull(nc, dest, 1)  # deduped by Nats-Msg-Id: still one copy
    assert decode(msg.data) == [job]


async def _holds(nc: Client, dest: str, n: int) -> bool:
    return await stream_messages(nc, dest) == n


async def test_workers_get_their_event_ack_once_the_manager_acked(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager
) -> None:
    name = f"r{uid}"
    relays(name, nats_url, extra=["--event-ack-wait-s", "600", "--resend-after-s", "600"])
    await wait_ready(nc, subjects.relay_events(name))
    events = worker_events(dispatch(sid, name, f"d{uid}", "j"))
    async with asyncio.TaskGroup() as tg:
        worker = tg.create_task(nc.request(subjects.relay_events(name), encode(events), timeout=DEADLINE_S))
        msg, got = await manager.next_events()
        assert got == events
        assert not worker.done()  # committed by the relay, but not passed on yet: the worker keeps its job
        await manager.ack(msg, got)
    (ack,) = decode(worker.result().data)
    assert ack.payload["eids"] == [e.payload["eid"] for e in events]


async def test_with_the_manager_silent_workers_get_their_ack_after_the_bound(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager
) -> None:
    name = f"r{uid}"
    relays(name, nats_url, extra=["--event-ack-wait-s", "0.2", "--resend-after-s", "600"])
    await wait_ready(nc, subjects.relay_events(name))
    events = worker_events(dispatch(sid, name, f"d{uid}", "j"))
    reply: Msg = await nc.request(subjects.relay_events(name), encode(events), timeout=DEADLINE_S)
    (ack,) = decode(reply.data)
    assert ack.payload["eids"] == [e.payload["eid"] for e in events]  # stored and forwarded later
    _, got = await manager.next_events()
    assert got == events


async def test_a_relay_killed_before_the_manager_acked_strands_no_event(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager
) -> None:
    name = f"r{uid}"
    quiet = ["--event-ack-wait-s", "600", "--resend-after-s", "600"]
    first = relays(name, nats_url, extra=quiet)
    await wait_ready(nc, subjects.relay_events(name))
    events = worker_events(dispatch(sid, name, f"d{uid}", "j"))
    eids = [e.payload["eid"] for e in events]
    async with asyncio.TaskGroup() as tg:
        worker = tg.create_task(_unanswered(nc, subjects.relay_events(name), encode(events)))
        _, got = await manager.next_events()  # passed on, not yet acked by the manager
        assert got == events
    # No ack while the manager has not acked: the worker still holds its job and the events.
    assert worker.result()
    await first.kill()

    relays(name, nats_url, db=first.db.with_name("other.db"), extra=quiet)  # another relay of the name
    await wait_ready(nc, subjects.relay_events(name))
    async with asyncio.TaskGroup() as tg:
        resent = tg.create_task(nc.request(subjects.relay_events(name), encode(events), timeout=DEADLINE_S))
        msg, got = await manager.next_events()
        assert got == events
        await manager.ack(msg, got)
    (ack,) = decode(resent.result().data)
    assert ack.payload["eids"] == eids


async def _unanswered(nc: Client, subject: str, body: bytes) -> bool:
    """Send a request as a worker does; tell whether it went unanswered."""
    try:
        await nc.request(subject, body, timeout=2)
    except NatsTimeoutError:
        return True
    return False
