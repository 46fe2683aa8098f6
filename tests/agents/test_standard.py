"""The standard agent as a real process: dispatch, events, dedupe, bad input, registration, SIGTERM."""

import asyncio
from pathlib import Path

import pytest
from nats.aio.client import Client

from runtime.bus import subscribe
from schemas import subjects
from schemas.codec import decode, encode, encode_one
from schemas.messages import Envelope, Finished, JobStatus, Kind
from tests.agents.conftest import Spawn
from tests.agents.helpers import DEADLINE_S, AgentProcess, EventSink, dispatch, spec
from tests.shell import wait_for_file


@pytest.fixture
async def manager(nc: Client, sid: str) -> EventSink:
    """A manager's events subject for ``sid``, acking everything."""
    return await EventSink.start(nc, subjects.events(sid))


async def _start_agent(nc: Client, spawn: Spawn, name: str, *args: str) -> AgentProcess:
    """Start a standard agent and wait for its registration (it is subscribed by then)."""
    reg = await subscribe(nc, subjects.agent_heartbeat(name))
    agent = spawn("--name", name, "--heartbeat-s", "0.5", "--grace", "1", "--kill-grace", "0.5", *args)
    try:
        async with asyncio.timeout(DEADLINE_S):
            async for msg in reg.messages:
                env = decode(msg.data)[0]
                if env.kind == Kind.REGISTER and env.payload.get("name") == name:
                    assert env.payload["kind"] == "agent"
                    assert env.payload["slots"] >= 1 and env.payload["cpus"] >= 1
                    break
    except TimeoutError:
        raise AssertionError(f"agent never registered; log:\n{agent.log()}") from None
    finally:
        await reg.unsubscribe()
    return agent


async def _dispatch(nc: Client, name: str, *envs: Envelope) -> dict[str, object]:
    reply = await nc.request(subjects.agent_run(name), encode(list(envs)), timeout=DEADLINE_S)
    (ack,) = decode(reply.data)
    assert ack.kind == Kind.ACK
    return ack.payload


async def test_dispatch_runs_and_reports_started_then_finished(
    nc: Client, spawn: Spawn, manager: EventSink, sid: str, uid: str
) -> None:
    name = f"a{uid}"
    agent = await _start_agent(nc, spawn, name)
    # Both run longer than STARTED_DELAY_S, so each reports STARTED before FINISHED.
    ok = spec(sid, "ok", argv=("sh", "-c", "echo hi; sleep 0.2"))
    bad = spec(sid, "bad", shell="echo oops >&2; sleep 0.2; exit 3")
    ack = await _dispatch(nc, name, dispatch(sid, ok), dispatch(sid, bad))
    assert ack == {"accepted": [ok.attempt_id, bad.attempt_id], "refused": []}

    fin_ok = Finished.from_wire((await manager.finished(ok.attempt_id)).payload)
    fin_bad = Finished.from_wire((await manager.finished(bad.attempt_id)).payload)
    assert (fin_ok.status, fin_ok.exit_code, fin_ok.stdout) == (JobStatus.SUCCEEDED, 0, b"hi\n")
    assert (fin_bad.status, fin_bad.exit_code, fin_bad.stderr) == (JobStatus.FAILED, 3, b"oops\n")
    for attempt in (ok.attempt_id, bad.attempt_id):
        kinds = [e.kind for e in manager.of(attempt)]
        assert kinds.index(Kind.STARTED) < kinds.index(Kind.FINISHED)
        started = manager.of(attempt, Kind.STARTED)[0]
        assert started.sid == sid and started.run_id == "r1" and started.epoch == 1
        assert started.payload["worker"] == name and started.payload["pid"] > 0
    agent.terminate()
    assert await agent.wait_exit() == 0


async def test_a_job_shorter_than_the_started_delay_reports_only_finished(
    nc: Client, spawn: Spawn, manager: EventSink, sid: str, uid: str
) -> None:
    name = f"a{uid}"
    await _start_agent(nc, spawn, name)
    quick = spec(sid, "quick", argv=("true",))
    await _dispatch(nc, name, dispatch(sid, quick))
    fin = Finished.from_wire((await manager.finished(quick.attempt_id)).payload)
    assert fin.status == JobStatus.SUCCEEDED
    assert [e.kind for e in manager.of(quick.attempt_id)] == [Kind.FINISHED]


async def test_duplicate_dispatch_does_not_run_twice(
    nc: Client, spawn: Spawn, manager: EventSink, sid: str, uid: str, tmp_path: Path
) -> None:
    name = f"a{uid}"
    await _start_agent(nc, spawn, name)
    runs = tmp_path / "runs"
    once = spec(sid, "once", shell=f"echo ran >> {runs}; sleep 0.3")
    # Twice in one batch, again while it runs, and again after it finished.
    ack = await _dispatch(nc, name, dispatch(sid, once), dispatch(sid, once))
    assert ack["accepted"] == [once.attempt_id, once.attempt_id]
    assert (await _dispatch(nc, name, dispatch(sid, once)))["accepted"] == [once.attempt_id]
    await manager.finished(once.attempt_id)
    assert (await _dispatch(nc, name, dispatch(sid, once)))["accepted"] == [once.attempt_id]
    # A later job finishing means the agent has dealt with every dispatch before it.
    marker = spec(sid, "marker", argv=("true",))
    await _dispatch(nc, name, dispatch(sid, marker))
    await manager.finished(marker.attempt_id)
    assert runs.read_text() == "ran\n"
    assert len(manager.of(once.attempt_id, Kind.FINISHED)) == 1


async def test_full_agent_refuses_as_unavailable(
    nc: Client, spawn: Spawn, manager: EventSink, sid: str, uid: str
) -> None:
    name = f"a{uid}"
    await _start_agent(nc, spawn, name, "--concurrency", "1")
    long = spec(sid, "long", argv=("sleep", "30"))
    other = spec(sid, "other", argv=("true",))
    ack = await _dispatch(nc, name, dispatch(sid, long), dispatch(sid, other))
    assert ack["accepted"] == [long.attempt_id]
    assert ack["refused"] == [{"attempt_id": other.attempt_id, "code": "unavailable", "reason": "all 1 slots are busy"}]


async def test_bad_input_is_answered_and_the_agent_keeps_serving(
    nc: Client, spawn: Spawn, manager: EventSink, sid: str, uid: str
) -> None:
    name = f"a{uid}"
    agent = await _start_agent(nc, spawn, name)
    long = spec(sid, "long", argv=("sleep", "30"))
    await _dispatch(nc, name, dispatch(sid, long))
    await manager.wait_for(lambda: bool(manager.of(long.attempt_id, Kind.STARTED)), "long to start")
    truncated = encode_one(dispatch(sid, long))[:-7]
    for subject in (subjects.agent_run(name), subjects.control(f"agent:{name}", long.attempt_id)):
        for body in (b"\xc1garbage", truncated, b""):
            reply = await nc.request(subject, body, timeout=DEADLINE_S)
            (err,) = decode(reply.data)
            assert err.kind == Kind.ERROR and err.payload["code"] == "malformed", subject
    for body in (b"\xc1garbage", truncated):
        await nc.publish(subjects.hello(sid), body)
        await nc.publish(subjects.agent_run(name), body)
    # A well-formed dispatch with a bad spec is refused, not run.
    broken = Envelope(kind=Kind.DISPATCH, sid=sid, payload={"attempt_id": "x", "job": "j"})
    ack = await _dispatch(nc, name, broken)
    assert ack["accepted"] == [] and ack["refused"][0]["code"] == "invalid"  # type: ignore[index]
    # Still alive: the control subject still kills, and a new job still runs.
    kill = Envelope(kind=Kind.CONTROL, sid=sid, payload={"action": "kill"})
    (kack,) = decode(
        (
            await nc.request(subjects.control(f"agent:{name}", long.attempt_id), encode_one(kill), timeout=DEADLINE_S)
        ).data
    )
    assert kack.kind == Kind.ACK
    fin = Finished.from_wire((await manager.finished(long.attempt_id)).payload)
    assert fin.status == JobStatus.KILLED
    after = spec(sid, "after", argv=("echo", "still here"))
    await _dispatch(nc, name, dispatch(sid, after))
    assert Finished.from_wire((await manager.finished(after.attempt_id)).payload).stdout == b"still here\n"
    assert agent.proc.poll() is None


async def test_hello_makes_the_agent_register_again(nc: Client, spawn: Spawn, sid: str, uid: str) -> None:
    name = f"a{uid}"
    await _start_agent(nc, spawn, name, "--heartbeat-s", "600")  # no heartbeat comes within the test
    reg = await subscribe(nc, subjects.agent_heartbeat(name))
    await nc.publish(subjects.hello(sid), encode_one(Envelope(kind=Kind.HELLO, sid=sid, payload={"epoch": 2})))
    async with asyncio.timeout(DEADLINE_S):
        async for msg in reg.messages:
            if decode(msg.data)[0].payload.get("name") == name:
                break
    await reg.unsubscribe()


async def test_sigterm_kills_what_outlives_the_grace_reports_it_and_exits_0(
    nc: Client, spawn: Spawn, manager: EventSink, sid: str, uid: str
) -> None:
    name = f"a{uid}"
    agent = await _start_agent(nc, spawn, name)
    long = spec(sid, "long", argv=("sleep", "30"))
    short = spec(sid, "short", argv=("sleep", "0.2"))
    await _dispatch(nc, name, dispatch(sid, long), dispatch(sid, short))
    await manager.wait_for(lambda: len(manager.of(long.attempt_id, Kind.STARTED)) == 1, "long to start")
    agent.terminate()
    # The deadline of wait_exit is below the job's 30 s: the job was killed, not waited for.
    assert await agent.wait_exit() == 0, agent.log()
    fin_long = Finished.from_wire((await manager.finished(long.attempt_id, timeout_s=1)).payload)
    assert fin_long.status == JobStatus.KILLED and "stopping" in fin_long.reason
    assert (
        Finished.from_wire((await manager.finished(short.attempt_id, timeout_s=1)).payload).status
        == JobStatus.SUCCEEDED
    )


async def test_a_replay_request_publishes_the_output_so_far_then_live_pieces_continue_its_offsets(
    nc: Client, spawn: Spawn, manager: EventSink, sid: str, uid: str, tmp_path: Path
) -> None:
    name = f"a{uid}"
    await _start_agent(nc, spawn, name)
    go = tmp_path / "go"
    script = f"printf 'early\\n'; printf 'oops\\n' >&2; {wait_for_file(str(go))}; printf 'late\\n'"
    talk = spec(sid, "talk", argv=("sh", "-c", script))
    out = await subscribe(nc, subjects.output(sid, "t1", talk.attempt_id))
    await _dispatch(nc, name, dispatch(sid, talk))
    await manager.wait_for(lambda: bool(manager.of(talk.attempt_id, Kind.STARTED)), "talk to start")
    ask = Envelope(kind=Kind.CONTROL, sid=sid, payload={"action": "replay"})
    (ack,) = decode(
        (await nc.request(subjects.control(f"agent:{name}", talk.attempt_id), encode_one(ask), timeout=DEADLINE_S)).data
    )
    assert ack.kind == Kind.ACK and ack.payload["action"] == "replay"
    async with asyncio.timeout(DEADLINE_S):
        async for msg in out.messages:
            envs = decode(msg.data)
            if any(env.payload.get("replay") for env in envs):
                break
    pieces = {(e.payload["stream"], e.payload["offset"], e.payload["data"]) for e in envs}
    assert pieces == {("stdout", 0, b"early\n"), ("stderr", 0, b"oops\n")}
    assert all(e.kind == Kind.OUTPUT and "token" not in e.payload for e in envs)  # operators read these
    go.touch()
    async with asyncio.timeout(DEADLINE_S):
        async for msg in out.messages:
            late = [e for e in decode(msg.data) if e.payload["data"] == b"late\n"]
            if late:
                break
    assert late[0].payload["offset"] == len(b"early\n") and "replay" not in late[0].payload
    assert Finished.from_wire((await manager.finished(talk.attempt_id)).payload).stdout == b"early\nlate\n"
