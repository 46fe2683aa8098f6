"""The destination worker as a real process: pulls from JetStream, reports to the relay, acks, drains."""

import asyncio
from collections.abc import AsyncIterator

import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from runtime.destinations import ensure_destination
from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.messages import Envelope, Finished, JobSpec, JobStatus, Kind
from tests.agents.conftest import Spawn
from tests.agents.helpers import DEADLINE_S, AgentProcess, EventSink, dispatch, spec


@pytest.fixture
def dest(uid: str) -> str:
    return f"d{uid}"


@pytest.fixture
def relay_name(uid: str) -> str:
    return f"r{uid}"


@pytest.fixture
async def js(nc: Client, dest: str) -> AsyncIterator[JetStreamContext]:
    """JetStream with the destination's stream made, and deleted after the test."""
    ctx = nc.jetstream()
    await ensure_destination(ctx, dest)
    yield ctx
    await ctx.delete_stream(subjects.dest_stream(dest))


@pytest.fixture
async def relay(nc: Client, relay_name: str) -> EventSink:
    """The relay's events subject, acking everything."""
    return await EventSink.start(nc, subjects.relay_events(relay_name))


def _job(sid: str, relay_name: str, job: str, **fields: object) -> JobSpec:
    return spec(sid, job, relay=relay_name, **fields)  # type: ignore[arg-type]


async def _put(js: JetStreamContext, dest: str, sid: str, job: JobSpec) -> None:
    body = encode_one(dispatch(sid, job))
    await js.publish(subjects.dest_run(dest), body, headers={"Nats-Msg-Id": job.attempt_id})


async def _stream_messages(js: JetStreamContext, dest: str) -> int:
    return (await js.stream_info(subjects.dest_stream(dest))).state.messages


async def _wait_stream_empty(js: JetStreamContext, dest: str) -> None:
    """Poll: JetStream sends no event when a work-queue stream becomes empty."""
    for _ in range(int(DEADLINE_S / 0.05)):
        if not await _stream_messages(js, dest):
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"stream of {dest} still holds {await _stream_messages(js, dest)} message(s)")


def _worker(spawn: Spawn, dest: str, *args: str) -> AgentProcess:
    return spawn("--dest", dest, "--heartbeat-s", "0.5", "--grace", "1", "--kill-grace", "0.5", *args)


async def test_worker_runs_jobs_and_acks_them_after_the_relay_did(
    js: JetStreamContext, spawn: Spawn, relay: EventSink, dest: str, relay_name: str, sid: str
) -> None:
    early = _job(sid, relay_name, "early", shell="sleep 0.6; echo early")
    await _put(js, dest, sid, early)
    worker = _worker(spawn, dest, "--concurrency", "2")
    late = _job(sid, relay_name, "late", shell="sleep 0.1; exit 5")
    await _put(js, dest, sid, late)
    await _put(js, dest, sid, late)  # a duplicate publish: JetStream drops it by its Nats-Msg-Id
    fin_early = Finished.from_wire((await relay.finished(early.attempt_id)).payload)
    fin_late = Finished.from_wire((await relay.finished(late.attempt_id)).payload)
    assert (fin_early.status, fin_early.stdout) == (JobStatus.SUCCEEDED, b"early\n")
    assert (fin_late.status, fin_late.exit_code) == (JobStatus.FAILED, 5)
    assert relay.of(early.attempt_id, Kind.STARTED)[0].payload["pid"] > 0
    await _wait_stream_empty(js, dest)
    # The job outlived a heartbeat interval, so it sent at least one heartbeat while it ran.
    assert relay.of(early.attempt_id, Kind.HEARTBEAT)
    worker.terminate()
    assert await worker.wait_exit() == 0, worker.log()
    # It ran once (the duplicate publish was dropped), long enough to report STARTED.
    assert len(relay.of(late.attempt_id, Kind.STARTED)) == 1


async def test_idle_worker_exits_0(js: JetStreamContext, spawn: Spawn, dest: str) -> None:
    worker = _worker(spawn, dest, "--idle-exit", "0.5")
    assert await worker.wait_exit() == 0, worker.log()
    assert "idle" in worker.log()


async def test_sigterm_hands_unfinished_jobs_back_and_exits_0(
    js: JetStreamContext, spawn: Spawn, relay: EventSink, dest: str, relay_name: str, sid: str
) -> None:
    long = _job(sid, relay_name, "long", argv=("sleep", "30"))
    short = _job(sid, relay_name, "short", argv=("sleep", "0.3"))
    await _put(js, dest, sid, long)
    await _put(js, dest, sid, short)
    worker = _worker(spawn, dest, "--concurrency", "2")
    await relay.wait_for(lambda: bool(relay.of(long.attempt_id, Kind.STARTED)), "long to start")
    await relay.wait_for(lambda: bool(relay.of(short.attempt_id, Kind.STARTED)), "short to start")
    worker.terminate()
    assert await worker.wait_exit() == 0, worker.log()
    # The short job finished within the grace and was reported; the long one went back to the stream.
    assert Finished.from_wire((await relay.finished(short.attempt_id, 1)).payload).status == JobStatus.SUCCEEDED
    assert not relay.of(long.attempt_id, Kind.FINISHED)
    assert await _stream_messages(js, dest) == 1


@pytest.mark.parametrize("restart", [True, False])
async def test_a_redelivered_job_is_reported_lost_not_run(
    js: JetStreamContext, spawn: Spawn, relay: EventSink, dest: str, relay_name: str, sid: str, restart: bool
) -> None:
    # Whatever the job's restart setting: running it again is the manager's decision, never the worker's.
    once = _job(sid, relay_name, "once", argv=("true",), restart=restart)
    await _put(js, dest, sid, once)
    # Take the first delivery ourselves and hand it back, as a worker that died would (after AckWait).
    pulls = await js.pull_subscribe_bind(durable=subjects.DEST_CONSUMER, stream=subjects.dest_stream(dest))
    (first,) = await pulls.fetch(1, timeout=DEADLINE_S)
    await first.nak()
    await pulls.unsubscribe()
    worker = _worker(spawn, dest)
    fin = Finished.from_wire((await relay.finished(once.attempt_id)).payload)
    assert fin.status == JobStatus.LOST
    assert fin.reason == "delivered 2 times, the executor before was lost"
    assert not relay.of(once.attempt_id, Kind.STARTED)
    await _wait_stream_empty(js, dest)  # acked: the manager decides what comes next
    worker.terminate()
    assert await worker.wait_exit() == 0


async def test_bad_messages_are_dropped_and_the_worker_keeps_working(
    js: JetStreamContext, spawn: Spawn, relay: EventSink, dest: str, relay_name: str, sid: str
) -> None:
    good = _job(sid, relay_name, "good", argv=("echo", "fine"))
    for i, body in enumerate(
        (
            b"\xc1junk",
            encode_one(dispatch(sid, good))[:-5],
            encode_one(dispatch(sid, spec(sid, "norelay", argv=("true",)))),
        )
    ):
        await js.publish(subjects.dest_run(dest), body, headers={"Nats-Msg-Id": f"bad{i}"})
    worker = _worker(spawn, dest)
    await _put(js, dest, sid, good)
    assert Finished.from_wire((await relay.finished(good.attempt_id)).payload).stdout == b"fine\n"
    await _wait_stream_empty(js, dest)
    assert worker.proc.poll() is None
    worker.terminate()
    assert await worker.wait_exit() == 0


async def test_kill_request_ends_a_job_killed_and_acked(
    nc: Client, js: JetStreamContext, spawn: Spawn, relay: EventSink, dest: str, relay_name: str, sid: str
) -> None:
    long = _job(sid, relay_name, "long", argv=("sleep", "30"))
    await _put(js, dest, sid, long)
    _worker(spawn, dest)
    await relay.wait_for(lambda: bool(relay.of(long.attempt_id, Kind.STARTED)), "long to start")
    kill = Envelope(kind=Kind.CONTROL, sid=sid, payload={"action": "kill"})
    reply = await nc.request(subjects.control(f"dest:{dest}", long.attempt_id), encode_one(kill), timeout=DEADLINE_S)
    assert decode(reply.data)[0].kind == Kind.ACK
    assert Finished.from_wire((await relay.finished(long.attempt_id)).payload).status == JobStatus.KILLED
    await _wait_stream_empty(js, dest)
