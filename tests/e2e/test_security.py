"""Security on the real stack: a nats-server configured by ``ekiden security init``, every piece with its credential.

Who gets in (no or wrong credentials: nothing), what a worker may touch (its own destination only, no stream
deletion), attempt tokens (a forged or replayed result changes nothing), tenants (an operator sees and runs
only its own), hostile parameters (one literal argument, never code), hostile bodies on every subject (every
process lives on and real work gets done), and the API rate limit.
"""

import asyncio
import os
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
import pytest
import pytest_asyncio
from nats.aio.client import Client
from nats.errors import Error as NatsError

from ekiden.client import ApiClient, Endpoint
from ekiden.natsauth import ADMIN, Identity, Role, init, security_dir
from ekiden.up import Stack, StackPlan
from engine.tokens import AttemptTokens
from runtime.bus import BusSettings, connect
from runtime.credentials import read_credentials, render_credentials
from runtime.destinations import ensure_destination
from runtime.errors import BusError
from schemas import subjects
from schemas.codec import decode, encode, encode_one
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Finished, JobStatus, Kind, attempt_id
from tests.engine.helpers import wait_for_run
from tests.shell import wait_for_file

pytestmark = pytest.mark.asyncio(loop_scope="module")

SID = "main"
#: Seconds to wait for anything that should happen.
DEADLINE_S = 30.0
#: The value the issue names: shell code if anything ever spliced it into a command line.
HOSTILE = "$(touch /tmp/pwned); rm -rf ~"
PWNED = Path("/tmp/pwned")
WORKER = Identity(Role.WORKER, "cloud")
AGENT = Identity(Role.AGENT, "local")
RELAY = Identity(Role.RELAY, "main")
MANAGER = Identity(Role.MANAGER, SID)
OP_A, OP_B, RO_A = Identity(Role.OPERATOR, "a"), Identity(Role.OPERATOR, "b"), Identity(Role.OPERATOR_RO, "a")


@dataclass
class Secured:
    """The module's stack and the admin's client."""

    stack: Stack
    admin: ApiClient
    work: Path

    def creds(self, who: Identity) -> str:
        return str(who.path(security_dir(self.stack.site)))

    @property
    def url(self) -> str:
        return self.stack.endpoint.nats_url

    async def client(self, who: Identity, timeout_s: float = 10.0) -> ApiClient:
        return await ApiClient.connect(Endpoint(self.url, SID, self.creds(who)), timeout_s=timeout_s)

    async def raw(self, who: Identity, errors: list[str] | None = None) -> Client:
        """A plain connection with ``who``'s credential; permission errors go to ``errors``."""

        async def on_error(exc: Exception) -> None:
            if errors is not None:
                errors.append(str(exc).lower())

        creds = read_credentials(self.creds(who))
        return await nats.connect(
            self.url,
            nkeys_seed_str=creds.seed,
            inbox_prefix=creds.inbox_prefix or "_INBOX",
            error_cb=on_error,
            allow_reconnect=False,
            connect_timeout=5,
        )


def _definitions(work: Path) -> dict[str, Any]:
    """Jobnets of the default tenant (on 'local' and 'cloud'), of tenant a (on agent-a) and of tenant b."""
    return {
        "destination": {"cloud": {"relay": "main"}},
        "agent": {"agent-a": {"tenant": "a"}, "agent-b": {"tenant": "b"}},
        "jobnet": {
            "na": {"tenant": "a", "job": [{"id": "hi", "cmd": ["true"], "agent": "agent-a"}]},
            "nb": {"tenant": "b", "job": [{"id": "secret", "cmd": ["echo", "b's data"], "agent": "agent-b"}]},
            "hold": {
                "job": [
                    {
                        "id": "long",
                        "dest": "cloud",
                        "cmd": [
                            "sh",
                            "-c",
                            wait_for_file(f"{work}/release"),
                        ],
                        "timeout_s": 60,
                    }
                ]
            },
            "fan": {
                "job": [
                    {"id": "start", "cmd": ["true"], "agent": "local"},
                    *(
                        {"id": f"w{i}", "call": "examples.jobs:noop", "dest": "cloud", "after": ["start"]}
                        for i in range(20)
                    ),
                    {"id": "join", "cmd": ["true"], "agent": "local", "after": [f"w{i}" for i in range(20)]},
                ]
            },
        },
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def sec(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Secured]:
    root = tmp_path_factory.mktemp("security")
    site = root / "site"
    # Tenants' operators first; the stack adds what its processes need and keeps these.
    init(site, [OP_A, OP_B, RO_A])
    stack = Stack(site)
    plan = StackPlan(
        relays=("main",),
        destinations=("cloud",),
        agents=("local", "agent-a"),
        workers_per_destination=1,
        worker_concurrency=8,
    )
    try:
        await stack.start(plan)
        admin = await ApiClient.connect(stack.endpoint, timeout_s=20)
        try:
            await admin.call("apply", definitions=_definitions(root))
            yield Secured(stack, admin, root)
        finally:
            await admin.close()
    finally:
        (root / "release").touch()  # whatever still waits ends, so the workers stop at once
        await stack.stop()


async def test_no_credentials_or_wrong_credentials_get_nothing(sec: Secured) -> None:
    assert "Authorization Violation" in await _refused(sec.url)
    # A well-formed credential whose key the server does not know: someone else's site, or a revoked one.
    seed = "SUAMLK2ZNL35WSMW37E7UD4VZ7ELPKW7DHC3BWBSD2GCZ7IUQQXZIORRBU"
    assert "Authorization Violation" in await _refused(sec.url, nkeys_seed_str=seed)
    assert "Authorization Violation" in await _refused(sec.url, user="admin", password="admin")
    stranger = sec.work / "stranger.creds"
    stranger.write_text(render_credentials(seed, "admin", "admin", "_INBOX.admin.admin"))
    stranger.chmod(0o600)
    with pytest.raises(BusError, match="Authorization Violation"):
        await connect(BusSettings(sec.url, str(stranger), connect_deadline_s=2))


async def test_a_worker_cannot_subscribe_elsewhere_pull_another_queue_or_delete_a_stream(sec: Secured) -> None:
    errors: list[str] = []
    nc = await sec.raw(WORKER, errors)
    relay = await sec.raw(RELAY)
    try:
        others = [
            subjects.relay_run("main"),
            subjects.agent_run("local"),
            subjects.events(SID),
            subjects.api_all(SID),
            subjects.dest_run("other"),
            subjects.controls_of("dest:other"),
            subjects.controls_of("agent:local"),
            subjects.control_all(),
            subjects.under("_INBOX"),
            subjects.under(subjects.inbox_prefix("worker", "other")),
        ]
        for subject in others:
            await nc.subscribe(subject)
        # Another destination's queue, with a job in it that must stay there.
        rjs = relay.jetstream()
        await ensure_destination(rjs, "other")
        await rjs.publish(subjects.dest_run("other"), b"a job of another destination")
        js = nc.jetstream(timeout=2)
        pulls = await js.pull_subscribe_bind(durable=subjects.DEST_CONSUMER, stream=subjects.dest_stream("other"))
        with pytest.raises(TimeoutError):
            await pulls.fetch(1, timeout=2)
        with pytest.raises(TimeoutError):
            await js.delete_stream(subjects.dest_stream("cloud"))
        with pytest.raises(TimeoutError):
            await js.purge_stream(subjects.dest_stream("other"))
        await nc.flush()
        await _until(lambda: len(errors) >= len(others) + 3)
        for subject in others:
            assert any(f'violation for subscription to "{subject.lower()}"' in e for e in errors), (subject, errors)
        assert any('publish to "$js.api.stream.delete.ekiden_dest_cloud"' in e for e in errors), errors
        assert any('publish to "$js.api.consumer.msg.next.ekiden_dest_other.workers"' in e for e in errors), errors
        assert (await rjs.stream_info(subjects.dest_stream("cloud"))).config.name == subjects.dest_stream("cloud")
        assert (await rjs.stream_info(subjects.dest_stream("other"))).state.messages == 1
    finally:
        await nc.close()
        await relay.close()


async def test_a_result_without_the_attempts_token_changes_nothing(sec: Secured) -> None:
    run = (await sec.admin.call("run", jobnet="hold"))["run"]
    doc = await _until_job(sec.admin, run, "long", "running")
    aid = doc["attempt_id"]
    assert aid == attempt_id(SID, run, "long", 1)
    epoch = (await sec.admin.call("ping"))["epoch"]
    # A genuine token, but of another attempt (what a worker that ran that one could replay).
    other = AttemptTokens.for_site(sec.stack.site).make(attempt_id(SID, run, "long", 2), "dest:cloud", epoch)
    forged = [
        _finished(run, aid, epoch, token=None),
        _finished(run, aid, epoch, token="A" * 22),
        _finished(run, aid, epoch, token=other),
        _finished(run, aid, epoch + 1, token=other),
    ]
    worker = await sec.raw(WORKER)
    agent = await sec.raw(AGENT)
    try:
        # Through the relay, as a worker reports; and straight to the manager, as a standard agent reports.
        reply = await worker.request(subjects.relay_events("main"), encode(forged), timeout=DEADLINE_S)
        assert decode(reply.data)[0].kind == Kind.ACK
        reply = await agent.request(subjects.events(SID), encode(forged), timeout=DEADLINE_S)
        ack = decode(reply.data)[0]
        assert ack.kind == Kind.ACK and len(ack.payload["eids"]) == len(forged)  # acked, so nobody resends them
    finally:
        await worker.close()
        await agent.close()
    status = await sec.admin.call("status", run=run)
    assert status["state"] == "running"
    assert [(j["state"], j["exit_code"], j["attempts"]) for j in status["jobs"]] == [("running", None, 1)]
    log = (sec.stack.site / "logs" / "manager.log").read_text()
    assert log.count(f"attempt {aid} refused: not the token") >= len(forged)
    # The genuine result still gets through.
    (sec.work / "release").touch()
    done = await wait_for_run(sec.admin, run, timeout_s=DEADLINE_S)
    assert done["state"] == "succeeded"
    (sec.work / "release").unlink()


async def test_an_operator_sees_and_runs_only_its_tenants_jobnets(sec: Secured) -> None:
    b_run = (await sec.admin.call("run", jobnet="nb"))["run"]  # waits for agent-b, which never comes
    a = await sec.client(OP_A)
    ro = await sec.client(RO_A, timeout_s=2)
    try:
        assert [n["name"] for n in await a.call("jobnets")] == ["na"]
        a_run = (await a.call("run", jobnet="na"))["run"]
        assert (await wait_for_run(a, a_run, timeout_s=DEADLINE_S))["state"] == "succeeded"
        assert {r["run"] for r in await a.call("runs")} == {a_run}
        assert {r["run"] for r in await sec.admin.call("runs")} >= {a_run, b_run}
        for verb, args in [
            ("run", {"jobnet": "nb"}),
            ("status", {"run": b_run}),
            ("logs", {"run": b_run, "job": "secret"}),
            ("kill", {"run": b_run}),
        ]:
            with pytest.raises(WireError) as refused:
                await a.call(verb, **args)
            assert refused.value.code == ErrorCode.NOT_FOUND, (verb, refused.value)
        steal = {"jobnet": {"nb": {"tenant": "a", "job": [{"id": "x", "cmd": ["true"], "agent": "agent-a"}]}}}
        for defs in [_definitions(sec.work), steal]:
            with pytest.raises(WireError) as refused:
                await a.call("apply", definitions=defs)
            assert refused.value.code == ErrorCode.FORBIDDEN
        with pytest.raises(WireError) as refused:
            await a.call("maintenance", on=True)
        assert refused.value.code == ErrorCode.FORBIDDEN
        # Asking as tenant b with a's credential never reaches the manager: NATS refuses the publish.
        with pytest.raises(TimeoutError):
            await a.nc.request(subjects.api(SID, "runs", "b"), encode_one(Envelope(Kind.API, SID)), timeout=2)
        # The read-only credential reads, and cannot start anything.
        assert [n["name"] for n in await ro.call("jobnets")] == ["na"]
        with pytest.raises(WireError) as refused:
            await ro.call("run", jobnet="na")
        assert refused.value.code == ErrorCode.UNAVAILABLE  # nobody answered: the publish was not allowed
        assert (await sec.admin.call("status", run=b_run))["state"] == "running"
    finally:
        await a.close()
        await ro.close()


async def test_a_hostile_parameter_reaches_the_job_as_one_literal_argument(sec: Secured) -> None:
    await asyncio.to_thread(PWNED.unlink, missing_ok=True)
    home = sec.work / "home"
    home.mkdir()
    (home / "canary").write_text("still here")
    outs = [sec.work / f"out{i}" for i in range(3)]
    write_args = "import pathlib, sys; pathlib.Path(sys.argv[1]).write_text(repr(sys.argv[2:]))"
    write_param = "import os, pathlib, sys; pathlib.Path(sys.argv[1]).write_text(os.environ['EKIDEN_PARAM_V'])"
    # HOME is a sacrificial directory: were the value ever run, 'rm -rf ~' would empty it, nothing else.
    env = {"HOME": str(home)}
    jobs = [
        {"id": "argv", "agent": "local", "env": env, "cmd": [sys.executable, "-c", write_args, str(outs[0]), HOSTILE]},
        {"id": "param", "agent": "local", "env": env, "cmd": [sys.executable, "-c", write_param, str(outs[1])]},
        {"id": "shell", "agent": "local", "env": env, "shell": True, "cmd": f'printf %s "$EKIDEN_PARAM_V" > {outs[2]}'},
    ]
    await sec.admin.call("apply", definitions={"jobnet": {"hostile": {"job": jobs}}})
    run = (await sec.admin.call("run", jobnet="hostile", params={"v": HOSTILE}))["run"]
    doc = await wait_for_run(sec.admin, run, timeout_s=DEADLINE_S)
    assert doc["state"] == "succeeded", doc
    assert outs[0].read_text() == repr([HOSTILE])
    assert outs[1].read_text() == HOSTILE
    assert outs[2].read_text() == HOSTILE
    assert not await asyncio.to_thread(PWNED.exists)
    assert (home / "canary").read_text() == "still here"


async def test_garbage_on_every_subject_leaves_every_process_serving(sec: Secured) -> None:
    run = (await sec.admin.call("run", jobnet="fan"))["run"]
    # Every subject each role may publish on: what a thief of that credential could send.
    by_role = {
        WORKER: [subjects.relay_events("main"), subjects.dest_heartbeat("cloud")],
        AGENT: [subjects.events(SID), subjects.agent_heartbeat("local")],
        RELAY: [subjects.events(SID), subjects.dest_run("cloud")],
        MANAGER: [
            subjects.relay_run("main"),
            subjects.relay_stats("main"),
            subjects.agent_run("local"),
            subjects.hello(SID),
            subjects.control("dest:cloud", attempt_id(SID, run, "w1", 1)),
        ],
        OP_A: [subjects.api(SID, verb, "a") for verb in ("run", "status", "apply", "runs", "logs", "nope")],
        ADMIN: [subjects.api(SID, verb) for verb in ("run", "apply", "maintenance", "agent")],
    }
    sent = 0
    for who, targets in by_role.items():
        nc = await sec.raw(who)
        try:
            js = nc.jetstream()
            for subject in targets:
                for body in _garbage(run):
                    if subject == subjects.dest_run("cloud"):
                        await js.publish(subject, body)
                    else:
                        await nc.publish(subject, body)
                    sent += 1
            await nc.flush()
        finally:
            await nc.close()
    assert sent > 200
    doc = await wait_for_run(sec.admin, run, timeout_s=DEADLINE_S * 2)
    assert doc["state"] == "succeeded", doc
    again = (await sec.admin.call("run", jobnet="fan"))["run"]
    assert (await wait_for_run(sec.admin, again, timeout_s=DEADLINE_S * 2))["state"] == "succeeded"
    dead = [name for name, _, proc in sec.stack.procs if proc.returncode is not None]
    assert dead == []


async def test_api_rate_limit_refuses_a_flood_with_a_retry_hint_and_spares_other_tenants(sec: Secured) -> None:
    b = await sec.raw(OP_B)
    a = await sec.client(OP_A)
    try:
        body = encode_one(Envelope(Kind.API, SID, ts=time.time()))
        replies = await asyncio.gather(
            *(b.request(subjects.api(SID, "ping", "b"), body, timeout=DEADLINE_S) for _ in range(1000))
        )
        errors = [e.payload for r in replies for e in decode(r.data) if e.kind == Kind.ERROR]
        assert errors, "a thousand requests at once all passed"
        assert {e["code"] for e in errors} == {"unavailable"}
        assert all(e["retryable"] and 0 < e["retry_after_s"] <= 1 for e in errors)
        assert len(errors) < 1000  # the burst went through first
        assert (await a.call("ping"))["server_id"] == SID  # another tenant's bucket is untouched
    finally:
        await b.close()
        await a.close()


async def _refused(url: str, **options: Any) -> str:
    """Why the server refused a connection made with ``options`` (it must refuse)."""
    nc = Client()
    try:
        await nc.connect(url, allow_reconnect=False, connect_timeout=2, **options)
    except NatsError as exc:
        return str(exc)
    finally:
        await nc.close()  # nats-py leaves a refused connection's socket open otherwise
    raise AssertionError(f"connected with {sorted(options)}")


def _finished(run: str, aid: str, epoch: int, token: str | None) -> Envelope:
    payload = Finished(aid, JobStatus.SUCCEEDED, 0, stdout=b"forged").to_wire()
    if token is not None:
        payload |= {"token": token, "eid": f"{payload['eid']}:{token[:12]}:{epoch}"}
    return Envelope(Kind.FINISHED, SID, payload, epoch, run, f"{run}:long", 1, "default", time.time())


def _garbage(run: str) -> list[bytes]:
    """Malformed, truncated, deeply nested, oversized and ill-typed bodies."""
    nested_maps = b"\x81\xa1k" * 5000 + b"\xc0"
    ill_typed = encode_one(Envelope(Kind.DISPATCH, SID, {"attempt_id": 1, "job": None, "argv": "rm -rf /"}))
    truncated = encode_one(Envelope(Kind.FINISHED, SID, {"eid": "x", "attempt_id": "y"}, run_id=run))[:-4]
    huge_claim = b"\x91\xdd\xff\xff\xff\xff"  # an array that says it has four billion items
    big = b"\x91\xc6" + (900_000).to_bytes(4, "big") + os.urandom(900_000)  # one large bin, not an envelope
    return [
        b"",
        b"\xc1",
        b"\x92\x01",
        b"\x91" * 10_000,
        nested_maps,
        os.urandom(700),
        huge_claim,
        big,
        ill_typed,
        truncated,
    ]


async def _until(ready: Any, timeout_s: float = DEADLINE_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.05)


async def _until_job(client: ApiClient, run: str, job: str, state: str) -> dict[str, Any]:
    deadline = time.monotonic() + DEADLINE_S
    while True:
        doc = await client.call("status", run=run)
        found: dict[str, Any] = next(j for j in doc["jobs"] if j["id"] == job)
        if found["state"] == state:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"job {job} of run {run} is {found['state']}, not {state}")
        await asyncio.sleep(0.05)
