"""The relay as a real process on a real nats-server: the test plays the manager and the workers."""

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgpack
import pytest
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.errors import NotFoundError

from runtime.bus import BusSettings, connect
from runtime.natsserver import NatsServer
from schemas import subjects
from schemas.codec import decode, encode, encode_one
from schemas.errors import ErrorCode
from schemas.messages import Envelope, Finished, JobStatus, Kind, event_for
from tests.relay.helpers import (
    DEADLINE_S,
    Manager,
    RelayProcess,
    dispatch,
    eventually,
    free_port,
    request,
    send_dispatches,
    send_events,
    wait_ready,
)

StartRelay = Callable[..., RelayProcess]


async def stream_messages(nc: Client, dest: str) -> int:
    """Messages in a destination's stream (0 while it does not exist)."""
    try:
        info = await nc.jetstream().stream_info(subjects.dest_stream(dest))
    except NotFoundError:
        return 0
    return int(info.state.messages or 0)


async def pull(nc: Client, dest: str, n: int) -> list[Msg]:
    """Wait until the destination's stream holds ``n`` jobs, check it holds no more, and pull them as a worker."""

    async def holds_n() -> bool:
        return await stream_messages(nc, dest) >= n

    await eventually(holds_n, f"{n} jobs in destination {dest}")
    assert await stream_messages(nc, dest) == n
    psub = await nc.jetstream().pull_subscribe_bind(durable=subjects.DEST_CONSUMER, stream=subjects.dest_stream(dest))
    msgs: list[Msg] = []
    while len(msgs) < n:
        msgs += await psub.fetch(n - len(msgs), timeout=DEADLINE_S)
    await psub.unsubscribe()
    return msgs


async def sigterm_exits_zero(relay: RelayProcess) -> None:
    relay.send(signal.SIGTERM)
    assert await relay.wait() == 0, relay.output()


def ids(envs: list[Envelope]) -> list[str]:
    return [e.payload["attempt_id"] for e in envs]


def worker_events(job: Envelope) -> list[Envelope]:
    """STARTED and FINISHED of one attempt, as a destination worker reports them."""
    started = event_for(job, Kind.STARTED, {"host": "w1", "pid": 42, "worker": "w1"}, time.time())
    fin = Finished(job.payload["attempt_id"], JobStatus.SUCCEEDED, 0, stdout=b"ok\n", host="w1")
    return [started, event_for(job, Kind.FINISHED, fin.to_wire(), time.time())]


async def collect(manager: Manager, eids: set[str], ack: bool) -> None:
    """Receive batches until every one of ``eids`` arrived; ack each batch or not."""
    seen: set[str] = set()
    while not eids <= seen:
        msg, envs = await manager.next_events()
        seen |= {e.payload["eid"] for e in envs}
        if ack:
            await manager.ack(msg, envs)


async def test_dispatch_is_acked_then_lands_in_the_destination_stream(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    relay = relays(name, nats_url)
    await wait_ready(nc, subjects.relay_run(name))
    jobs = [dispatch(sid, name, dest, f"j{i}") for i in range(3)]
    no_dest = dispatch(sid, name, dest, "nodest")
    no_dest.payload["dest"] = None
    no_command = dispatch(sid, name, dest, "nocmd")
    no_command.payload["argv"] = None

    ack = await send_dispatches(nc, name, [*jobs, no_dest, no_command])

    assert ack["accepted"] == ids(jobs)
    assert [(r["attempt_id"], r["code"]) for r in ack["refused"]] == [
        (no_dest.payload["attempt_id"], "invalid"),
        (no_command.payload["attempt_id"], "invalid"),
    ]
    msgs = await pull(nc, dest, len(jobs))
    assert [m.headers and m.headers["Nats-Msg-Id"] for m in msgs] == ids(jobs)
    assert [decode(m.data) for m in msgs] == [[j] for j in jobs]
    await sigterm_exits_zero(relay)


async def test_a_redelivered_batch_is_accepted_again_and_forwarded_once(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    relays(name, nats_url)
    await wait_ready(nc, subjects.relay_run(name))
    first, later = dispatch(sid, name, dest, "a"), dispatch(sid, name, dest, "b")

    assert (await send_dispatches(nc, name, [first]))["accepted"] == ids([first])
    (pulled,) = await pull(nc, dest, 1)
    await pulled.ack_sync()
    # A new stream has no dedupe memory of "a": only the relay's own keeps it from going in twice. The
    # relay finds the stream gone on its next publish and creates it again.
    await nc.jetstream().delete_stream(subjects.dest_stream(dest))
    assert (await send_dispatches(nc, name, [first]))["accepted"] == ids([first])
    assert (await send_dispatches(nc, name, [first, later]))["accepted"] == ids([first, later])

    # The forwarder keeps order per destination: were "a" forwarded again, it would be in before "b".
    (msg,) = await pull(nc, dest, 1)
    assert decode(msg.data) == [later]


async def test_worker_events_are_acked_and_reach_the_manager(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager
) -> None:
    name = f"r{uid}"
    relay = relays(name, nats_url)
    await wait_ready(nc, subjects.relay_events(name))
    events = worker_events(dispatch(sid, name, f"d{uid}", "j"))
    stray = dispatch(sid, name, f"d{uid}", "k")  # not an event: ignored, not acked

    acked = await send_events(nc, name, [*events, stray])

    assert acked == [e.payload["eid"] for e in events]
    msg, got = await manager.next_events()
    assert got == events
    await manager.ack(msg, got)
    await sigterm_exits_zero(relay)


async def test_unacked_events_are_resent(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager
) -> None:
    name = f"r{uid}"
    relays(name, nats_url, extra=["--resend-after-s", "0.3"])
    await wait_ready(nc, subjects.relay_events(name))
    events = worker_events(dispatch(sid, name, f"d{uid}", "j"))
    eids = {e.payload["eid"] for e in events}
    await send_events(nc, name, events)

    await collect(manager, eids, ack=False)
    await collect(manager, eids, ack=True)  # sent again, as nothing was acked


async def test_hello_makes_the_relay_resend_at_once(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager
) -> None:
    name = f"r{uid}"
    # The resend timer is far beyond the test's deadline: only the hello can bring the events back.
    relays(name, nats_url, extra=["--resend-after-s", "600"])
    await wait_ready(nc, subjects.relay_events(name))
    events = worker_events(dispatch(sid, name, f"d{uid}", "j"))
    eids = {e.payload["eid"] for e in events}
    await send_events(nc, name, events)
    await collect(manager, eids, ack=False)

    await nc.publish(subjects.hello(sid), encode_one(Envelope(Kind.HELLO, sid, {"epoch": 2}, epoch=2)))

    await collect(manager, eids, ack=True)


async def test_sigkill_after_acks_loses_nothing(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager, tmp_path: Path
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    db = tmp_path / "relay.db"
    relay = relays(name, nats_url, db=db, extra=["--resend-after-s", "600"])
    await wait_ready(nc, subjects.relay_run(name))
    job = dispatch(sid, name, dest, "j")
    assert (await send_dispatches(nc, name, [job]))["accepted"] == ids([job])
    (pulled,) = await pull(nc, dest, 1)
    events = worker_events(decode(pulled.data)[0])
    eids = {e.payload["eid"] for e in events}
    assert set(await send_events(nc, name, events)) == eids
    await collect(manager, eids, ack=False)

    await relay.kill()
    relay = relays(name, nats_url, db=db, extra=["--resend-after-s", "600"])

    await collect(manager, eids, ack=True)  # loaded from SQLite and sent at start
    assert await stream_messages(nc, dest) == 1  # the forwarded job was not forwarded again
    await sigterm_exits_zero(relay)


async def test_a_full_backlog_refuses_new_jobs_with_the_reason(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay
) -> None:
    name, dest, other = f"r{uid}", f"d{uid}", f"o{uid}"
    # Nothing listens downstream, so every accepted job stays held.
    relays(name, nats_url, downstream_url=f"nats://127.0.0.1:{free_port()}", extra=["--max-backlog", "2"])
    await wait_ready(nc, subjects.relay_run(name))
    jobs = [dispatch(sid, name, dest, f"j{i}") for i in range(3)]

    for _ in range(2):  # the second time the held two are accepted again, the third still refused
        ack = await send_dispatches(nc, name, jobs)
        assert ack["accepted"] == ids(jobs[:2])
        assert ack["refused"] == [
            {
                "attempt_id": jobs[2].payload["attempt_id"],
                "code": str(ErrorCode.UNAVAILABLE),
                "reason": f"relay {name} backlog full: 2 jobs waiting for destination {dest}",
            }
        ]
    elsewhere = dispatch(sid, name, other, "x")
    assert (await send_dispatches(nc, name, [elsewhere]))["accepted"] == ids([elsewhere])


async def test_sigterm_exits_zero_and_held_jobs_go_on_after_restart(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, tmp_path: Path
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    db = tmp_path / "relay.db"
    graces = ["--shutdown-grace-s", "0.5", "--outbox-grace-s", "0.5"]
    relay = relays(name, nats_url, db=db, downstream_url=f"nats://127.0.0.1:{free_port()}", extra=graces)
    await wait_ready(nc, subjects.relay_run(name))
    job = dispatch(sid, name, dest, "j")
    assert (await send_dispatches(nc, name, [job]))["accepted"] == ids([job])

    await sigterm_exits_zero(relay)
    assert await stream_messages(nc, dest) == 0
    relays(name, nats_url, db=db)  # now with a reachable JetStream

    (msg,) = await pull(nc, dest, 1)
    assert decode(msg.data) == [job]


GARBAGE = [
    b"",
    b"\xc1",
    b"\x00garbage\xff\xfe",
    msgpack.packb({"not": "a list"}),
    msgpack.packb([[1, "dispatch"]]),
]


async def test_garbage_leaves_the_relay_alive_and_serving(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    relay = relays(name, nats_url, extra=["--resend-after-s", "600"])
    await wait_ready(nc, subjects.relay_run(name))
    await wait_ready(nc, subjects.relay_events(name))
    job = dispatch(sid, name, dest, "j")
    events = worker_events(job)
    truncated = [encode([job])[:-5], encode(events)[:-5]]

    for body in [*GARBAGE, *truncated]:
        for subject in (subjects.relay_run(name), subjects.relay_events(name), subjects.hello(sid)):
            (reply,) = await request(nc, subject, body)
            assert reply.kind == Kind.ERROR, (subject, body)
            assert reply.payload["code"] == str(ErrorCode.MALFORMED)
            await nc.publish(subject, body)  # and with no reply subject at all

    assert relay.proc is not None and relay.proc.poll() is None
    assert (await send_dispatches(nc, name, [job]))["accepted"] == ids([job])
    await pull(nc, dest, 1)
    eids = {e.payload["eid"] for e in events}
    assert set(await send_events(nc, name, events)) == eids
    await collect(manager, eids, ack=False)
    await nc.publish(subjects.hello(sid), encode_one(Envelope(Kind.HELLO, sid, {"epoch": 1}, epoch=1)))
    await collect(manager, eids, ack=True)  # the hello subscription still works
    await sigterm_exits_zero(relay)


async def test_the_relay_bridges_two_separate_nats_systems(
    nc: Client, nats_url: str, uid: str, sid: str, relays: StartRelay, manager: Manager, tmp_path: Path
) -> None:
    name, dest = f"r{uid}", f"d{uid}"
    cloud = NatsServer(store_dir=tmp_path / "cloud", port=free_port())
    relay = relays(name, nats_url, downstream_url=f"nats://{cloud.host}:{cloud.port}")
    try:
        await wait_ready(nc, subjects.relay_run(name))
        first, second = dispatch(sid, name, dest, "a"), dispatch(sid, name, dest, "b")
        # The cloud is not up yet: the relay takes and holds the job (store and forward).
        assert (await send_dispatches(nc, name, [first]))["accepted"] == ids([first])

        cloud.start()
        worker = await connect(BusSettings(url=cloud.url, name="worker", connect_deadline_s=5))
        try:
            (msg,) = await pull(worker, dest, 1)
            assert decode(msg.data) == [first]
            assert await stream_messages(nc, dest) == 0  # nothing went into the managers' JetStream

            await wait_ready(worker, subjects.relay_events(name))
            events = worker_events(first)
            eids = {e.payload["eid"] for e in events}
            assert set(await send_events(worker, name, events)) == eids
            await collect(manager, eids, ack=True)
            await msg.ack_sync()  # as a worker does once the relay acked FINISHED

            # The cloud goes away and comes back: what was accepted meanwhile is forwarded then.
            cloud.stop()
            assert (await send_dispatches(nc, name, [second]))["accepted"] == ids([second])
            cloud.start()
            (msg,) = await pull(worker, dest, 1)
            assert msg.headers is not None and msg.headers["Nats-Msg-Id"] == ids([second])[0]
        finally:
            await worker.close()
        await sigterm_exits_zero(relay)
    finally:
        cloud.stop()


@pytest.mark.parametrize("argv", [["--name", "x"], ["--name", "bad name", "--nats", "nats://h:1", "--db", "d"]])
def test_a_bad_command_line_exits_non_zero(argv: list[str]) -> None:
    done = subprocess.run([sys.executable, "-m", "relay", *argv], capture_output=True, timeout=DEADLINE_S)
    assert done.returncode != 0
    assert b"relay:" in done.stderr


async def test_a_relay_carries_control_down_and_output_up_once_even_if_both_sides_are_one_nats(
    nc: Client, nats_url: str, uid: str, relays: StartRelay
) -> None:
    name = f"r{uid}"
    relay = relays(name, nats_url, downstream_url=nats_url)  # a misconfiguration, but not a loop
    await wait_ready(nc, subjects.relay_events(name))  # the downstream side is subscribed too
    got: dict[str, list[Msg]] = {}

    async def take(msg: Msg) -> None:
        got.setdefault(msg.subject, []).append(msg)

    control, output = subjects.control("dest:d1", f"x{uid}"), subjects.output("s1", "t1", f"x{uid}")
    for subject in (control, output):
        await nc.subscribe(subject, cb=take)
        await nc.publish(subject, b"piece")

    async def both_carried() -> bool:
        return all(len(got.get(s, [])) >= 2 for s in (control, output))

    await eventually(both_carried, "the relay to carry both messages")
    await asyncio.sleep(0.5)  # a loop would have carried them again and again by now
    for subject in (control, output):
        original, carried = got[subject]
        assert original.data == carried.data == b"piece"
        assert carried.headers is not None and subjects.CARRIED_HEADER in carried.headers
        assert len(got[subject]) == 2
    await sigterm_exits_zero(relay)
