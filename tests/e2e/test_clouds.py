"""Flexible jobs in real clouds: two NATS systems bridged only by relays; failover; scaling; lost executors.

One manager (``python -m engine``) runs on the on-premises nats-server for the whole module; a relay named
``main`` bridges it to a separate cloud nats-server, where the destination workers (``python -m agents``)
live. Each test brings its own destinations, workers and (for failover) relays.
"""

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.js.errors import NotFoundError

from ekiden.client import ApiClient, Endpoint
from runtime.bus import BusSettings, connect
from runtime.destinations import consumer_config, stream_config
from runtime.natsserver import NatsServer
from schemas import subjects
from tests.agents.helpers import AgentProcess, alive, wait_dead
from tests.e2e.procs import MARK, outcome, wait_for_end, wait_for_succeeded
from tests.engine.helpers import wait_for_manager
from tests.relay.helpers import RelayProcess, eventually, wait_ready

REPO = Path(__file__).resolve().parents[2]
#: Server ID of the module's manager.
SID = "onprem"
#: Seconds after which the manager offers again a dispatch a relay holds but has not queued.
HELD_RESEND_S = 2.0
#: Job states after which nothing more happens to a job (plus ``held``, which waits for the operator).
SETTLED = {"succeeded", "failed", "timed_out", "killed", "skipped", "lost", "held"}
#: Generous deadline for a run, in seconds (a shared, noisy 2-core machine).
RUN_DEADLINE_S = 90.0


@dataclass
class Clouds:
    """The module's two NATS systems, its manager and its relay ``main``."""

    onprem: NatsServer
    cloud: NatsServer
    manager: subprocess.Popen[bytes]
    relay: RelayProcess
    site: Path

    @property
    def endpoint(self) -> Endpoint:
        return Endpoint(self.onprem.url, SID)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("EKIDEN_")}
    with log.open("ab") as out:
        return subprocess.Popen(
            [sys.executable, *args], cwd=REPO, env=env, stdin=subprocess.DEVNULL, stdout=out, stderr=out
        )


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


async def _until_up(clouds: Clouds) -> None:
    client = await ApiClient.connect(clouds.endpoint, timeout_s=10)
    try:
        await wait_for_manager(client, timeout_s=30)
        await wait_ready(client.nc, subjects.relay_run("main"))
    finally:
        await client.close()


@pytest.fixture(scope="module")
def clouds(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Clouds]:
    """Two unconnected nats-servers, a manager on one, the relay ``main`` between them."""
    root = tmp_path_factory.mktemp("clouds")
    onprem, cloud = NatsServer(store_dir=root / "onprem"), NatsServer(store_dir=root / "cloud")
    onprem.start()
    cloud.start()
    site = root / "site"
    args = ["-m", "engine", "--site", str(site), "--server-id", SID, "--nats", onprem.url]
    args += ["--held-resend-s", str(HELD_RESEND_S), "--dispatch-timeout-s", "3", "--log-level", "DEBUG"]
    manager = _spawn(args, root / "manager.log")
    relay = RelayProcess("main", onprem.url, root / "relay-main.db", downstream_url=cloud.url)
    relay.start()
    clouds = Clouds(onprem, cloud, manager, relay, site)
    try:
        asyncio.run(_until_up(clouds))
        yield clouds
    finally:
        relay.stop()
        _stop(manager)
        cloud.stop()
        onprem.stop()


@pytest.fixture
async def client(clouds: Clouds) -> AsyncIterator[ApiClient]:
    """An API client on the on-premises NATS."""
    c = await ApiClient.connect(clouds.endpoint, timeout_s=10)
    yield c
    await c.close()


@pytest.fixture
async def cloud_nc(clouds: Clouds) -> AsyncIterator[Client]:
    """A client of the cloud NATS, where the workers are."""
    nc = await connect(BusSettings(url=clouds.cloud.url, name="test-cloud", connect_deadline_s=5))
    yield nc
    await nc.drain()


@dataclass
class Workers:
    """Destination workers on the cloud NATS, stopped at teardown."""

    clouds: Clouds
    tmp: Path
    started: list[AgentProcess] = field(default_factory=list)

    def start(self, dest: str, *args: str) -> AgentProcess:
        log = self.tmp / f"worker{len(self.started)}.log"
        base = ["--dest", dest, "--nats", self.clouds.cloud.url, "--heartbeat-s", "0.5", "--log-level", "DEBUG"]
        worker = AgentProcess([*base, *args], log)
        self.started.append(worker)
        return worker


@pytest.fixture
async def workers(clouds: Clouds, tmp_path: Path) -> AsyncIterator[Workers]:
    w = Workers(clouds, tmp_path)
    yield w
    for worker in w.started:
        await worker.stop()


@pytest.fixture
def uid(uid: str) -> str:
    """Names in these tests start with a letter and stay short."""
    return uid[:6]


def mark_jobs(dest: str, marks: Path, n: int, delay_s: float, restart: bool = False) -> list[dict[str, Any]]:
    """``n`` independent jobs, each appending its ID to ``marks`` after ``delay_s``."""
    return [
        {
            "id": f"j{i}",
            "call": MARK,
            "args": {"path": str(marks), "line": f"j{i}", "delay_s": delay_s},
            "dest": dest,
            "restart": restart,
        }
        for i in range(n)
    ]


def lines(path: Path) -> list[str]:
    return sorted(path.read_text().split()) if path.exists() else []


async def start_run(client: ApiClient, definitions: dict[str, Any], jobnet: str) -> str:
    await client.call("apply", definitions=definitions)
    return str((await client.call("run", jobnet=jobnet))["run"])


async def count_succeeded(client: ApiClient, run: str) -> int:
    doc = await client.call("status", run=run)
    return sum(1 for j in doc["jobs"] if j["state"] == "succeeded")


async def assert_all_succeeded_once(clouds: Clouds, run: str, marks: Path, n: int) -> None:
    """The run ends succeeded; every job ran exactly once (one mark) on its first attempt."""
    assert await wait_for_end(clouds.site, run, RUN_DEADLINE_S) == "succeeded"
    result = outcome(clouds.site, run, marks)
    assert result.not_succeeded() == {}
    assert result.not_once({f"j{i}" for i in range(n)}) == {}
    assert result.dispatched_again() == {}


async def test_100_flexible_jobs_cross_two_nats_systems_through_the_relay_alone(
    clouds: Clouds, client: ApiClient, cloud_nc: Client, workers: Workers, uid: str, tmp_path: Path
) -> None:
    dest, net, marks = f"c{uid}", f"n{uid}", tmp_path / "marks"
    for _ in range(2):
        workers.start(dest, "--concurrency", "8")
    defs = {"destination": {dest: {"relay": "main"}}, "jobnet": {net: {"job": mark_jobs(dest, marks, 100, 0.0)}}}
    run = await start_run(client, defs, net)
    await assert_all_succeeded_once(clouds, run, marks, 100)

    # The workers' NATS has no route to the manager's: they are two unconnected systems.
    with pytest.raises(NoRespondersError):
        await cloud_nc.request(subjects.api(SID, "ping"), b"", timeout=5)
    await cloud_nc.jetstream().stream_info(subjects.dest_stream(dest))  # the queue lives in the cloud
    with pytest.raises(NotFoundError):
        await client.nc.jetstream().stream_info(subjects.dest_stream(dest))
    listed = {d["name"]: d for d in await client.call("destinations")}
    assert listed[dest]["reported"] and listed[dest]["pending"] == 0  # the relay answers for the cloud


async def test_a_late_follower_and_a_kill_reach_a_worker_in_the_other_nats_system(
    clouds: Clouds, client: ApiClient, workers: Workers, uid: str, tmp_path: Path
) -> None:
    dest, net, pidfile = f"c{uid}", f"n{uid}", tmp_path / "child.pid"
    workers.start(dest, "--concurrency", "2")
    job = {"id": "long", "cmd": f"echo early; sleep 300 & echo $! > {pidfile}; wait", "shell": True, "dest": dest}
    run = await start_run(client, {"destination": {dest: {"relay": "main"}}, "jobnet": {net: {"job": [job]}}}, net)

    async def child_started() -> bool:
        return pidfile.exists() and bool(pidfile.read_text().strip())

    async def child_gone() -> bool:
        return not alive(child)

    await eventually(child_started, "the job's child to start", RUN_DEADLINE_S)
    child = int(pidfile.read_text())
    env = {k: v for k, v in os.environ.items() if not k.startswith("EKIDEN_")}
    argv = [sys.executable, "-m", "ekiden", "logs", run, "long", "--follow", "--nats", clouds.onprem.url]
    follower = await asyncio.create_subprocess_exec(
        *argv, "--server-id", SID, cwd=REPO, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert follower.stdout is not None
    async with asyncio.timeout(RUN_DEADLINE_S):
        # Written before the follower attached: the replay came down and back up through the relay.
        assert await follower.stdout.readline() == b"early\n"
        await client.call("kill", run=run, job="long")
        _, err = await follower.communicate()
    assert follower.returncode == 0, err
    assert b"(long killed)" in err
    assert await wait_for_end(clouds.site, run, RUN_DEADLINE_S) == "failed"
    await eventually(child_gone, "the killed job's child to end", RUN_DEADLINE_S)


async def test_a_kill_sent_while_the_relay_was_down_reaches_the_job_once_it_is_back(
    clouds: Clouds, client: ApiClient, workers: Workers, uid: str, tmp_path: Path
) -> None:
    dest, net, pidfile = f"c{uid}", f"n{uid}", tmp_path / "child.pid"
    workers.start(dest, "--concurrency", "2")
    job = {"id": "long", "cmd": f"sleep 300 & echo $! > {pidfile}; wait", "shell": True, "dest": dest}
    run = await start_run(client, {"destination": {dest: {"relay": "main"}}, "jobnet": {net: {"job": [job]}}}, net)

    async def child_started() -> bool:
        return pidfile.exists() and bool(pidfile.read_text().strip())

    await eventually(child_started, "the job's child to start", RUN_DEADLINE_S)
    child = int(pidfile.read_text())
    await clouds.relay.kill()  # the only relay between the two NATS systems
    try:
        # Nothing carries this request to the workers' NATS: it is lost.
        await client.call("kill", run=run, job="long")
        assert alive(child)
    finally:
        clouds.relay.start()
        await _until_up(clouds)

    async def child_gone() -> bool:
        return not alive(child)

    # The job's next heartbeat comes through the relay again, and the manager asks again.
    await eventually(child_gone, "the killed job's child to end", RUN_DEADLINE_S)
    assert await wait_for_end(clouds.site, run, RUN_DEADLINE_S) == "failed"
    doc = await client.call("status", run=run)
    assert [(j["id"], j["state"]) for j in doc["jobs"]] == [("long", "killed")]


async def test_a_relay_killed_mid_run_loses_nothing_and_runs_nothing_twice(
    clouds: Clouds, client: ApiClient, workers: Workers, uid: str, tmp_path: Path
) -> None:
    name, dest, net, marks = f"fo{uid}", f"f{uid}", f"n{uid}", tmp_path / "marks"
    pair = [
        RelayProcess(name, clouds.onprem.url, tmp_path / f"relay{i}.db", downstream_url=clouds.cloud.url)
        for i in range(2)
    ]
    for relay in pair:
        relay.start()
    try:
        for relay in pair:

            async def ready(relay: RelayProcess = relay) -> bool:
                return "downstream ready" in relay.output()

            await eventually(ready, f"relay {relay.db.name} ready")
        for _ in range(2):
            workers.start(dest, "--concurrency", "4")
        # Eight chains, so dispatches keep coming all through the run and both relays share them.
        chains, length = 8, 12
        jobs = mark_jobs(dest, marks, chains * length, 0.2, restart=False)
        for i, job in enumerate(jobs):
            if i >= chains:
                job["after"] = [f"j{i - chains}"]
        run = await start_run(client, {"destination": {dest: {"relay": name}}, "jobnet": {net: {"job": jobs}}}, net)
        await wait_for_succeeded(clouds.site, run, 2 * chains, RUN_DEADLINE_S)

        async def victim_worked() -> bool:
            return "holding" in pair[0].output()  # it took dispatches, so it dies holding some of the run

        await eventually(victim_worked, "the first relay to take dispatches")
        assert await count_succeeded(client, run) < chains * length, "the run ended before the kill"
        await pair[0].kill()
        await assert_all_succeeded_once(clouds, run, marks, chains * length)
    finally:
        for relay in pair:
            relay.stop()


def _finished_attempts(worker: AgentProcess) -> int:
    return len(re.findall(r"attempt \S+ succeeded", worker.log()))


async def test_workers_scale_up_and_in_mid_run_and_exit_when_idle(
    clouds: Clouds, client: ApiClient, workers: Workers, uid: str, tmp_path: Path
) -> None:
    dest, net, marks = f"s{uid}", f"n{uid}", tmp_path / "marks"
    first = workers.start(dest, "--concurrency", "2", "--grace", "30")
    n = 60
    jobs = mark_jobs(dest, marks, n, 0.25, restart=False)
    run = await start_run(client, {"destination": {dest: {"relay": "main"}}, "jobnet": {net: {"job": jobs}}}, net)
    await wait_for_succeeded(clouds.site, run, 4, RUN_DEADLINE_S)

    added = [workers.start(dest, "--concurrency", "2", "--grace", "30") for _ in range(3)]
    for worker in added:  # workers started mid-run take work at once

        async def took_work(worker: AgentProcess = worker) -> bool:
            return _finished_attempts(worker) > 0

        await eventually(took_work, "a new worker ran a job", deadline_s=RUN_DEADLINE_S)

    # Scale in under load: SIGTERM stops the pulls; running jobs finish within the grace, none is handed back.
    assert await count_succeeded(client, run) < n, "the run ended before the scale-in: make the jobs longer"
    leaving = [first, added[0]]
    for worker in leaving:
        worker.terminate()
    for worker in leaving:
        assert await worker.wait_exit(timeout_s=60) == 0, worker.log()
        assert "stopped (0 attempt(s) handed back)" in worker.log()
    await assert_all_succeeded_once(clouds, run, marks, n)

    idle = workers.start(dest, "--idle-exit", "1")  # scale to zero: nothing left to do
    assert await idle.wait_exit(timeout_s=30) == 0, idle.log()
    assert "idle for 1 s: exiting" in idle.log()


async def test_a_worker_killed_mid_job_follows_the_restart_table(
    clouds: Clouds, client: ApiClient, cloud_nc: Client, workers: Workers, uid: str, tmp_path: Path
) -> None:
    restart, purge, stop, net = f"r{uid}", f"p{uid}", f"t{uid}", f"n{uid}"
    marks, pids, flags = tmp_path / "marks", tmp_path / "pids", tmp_path / "flags"
    flags.mkdir()
    # A short AckWait (the workers heartbeat every 0.5 s) so a dead worker's job is redelivered in seconds.
    js = cloud_nc.jetstream()
    for dest in (restart, purge, stop):
        await js.add_stream(stream_config(dest))
        await js.add_consumer(subjects.dest_stream(dest), replace(consumer_config(), ack_wait=2.0))

    def job(job_id: str, dest: str, job_restart: bool) -> dict[str, Any]:
        # Marks each run; the first run of each job sleeps (to be killed), a second one succeeds at once.
        flag = flags / job_id
        script = f"echo {job_id} >> {marks}; echo $$ >> {pids}; [ -e {flag} ] && exit 0; touch {flag}; exec sleep 120"
        return {"id": job_id, "cmd": ["sh", "-c", script], "dest": dest, "restart": job_restart}

    defs = {
        "destination": {
            restart: {"relay": "main", "restart": "RESTART"},
            purge: {"relay": "main", "restart": "PURGE"},
            stop: {"relay": "main", "restart": "STOP"},
        },
        "jobnet": {
            net: {
                "job": [
                    job("restart_true", restart, True),
                    job("restart_false", restart, False),
                    job("purge", purge, True),
                    job("stop", stop, True),
                ]
            }
        },
    }
    victims = [workers.start(restart, "--concurrency", "2"), workers.start(purge), workers.start(stop)]
    try:
        run = await start_run(client, defs, net)

        async def all_running() -> bool:
            doc = await client.call("status", run=run)
            return all(j["state"] == "running" for j in doc["jobs"])

        await eventually(all_running, "every job running", deadline_s=RUN_DEADLINE_S)
        running = [int(pid) for pid in lines(pids)]
        for victim in victims:
            victim.proc.kill()
            await victim.wait_exit()
        for pid in running:  # each worker's janitor killed its jobs: none runs on beside its second run
            assert await wait_dead(pid), "a job outlived its SIGKILLed worker"
        for dest in (restart, purge, stop):  # the survivors that find the dead workers' jobs redelivered
            workers.start(dest)

        async def settled() -> bool:
            doc = await client.call("status", run=run)
            return all(j["state"] in SETTLED for j in doc["jobs"])

        await eventually(settled, "every job settled", deadline_s=RUN_DEADLINE_S)
        doc = await client.call("status", run=run)
        outcomes = {j["id"]: (j["state"], j["attempts"]) for j in doc["jobs"]}
        assert outcomes == {
            "restart_true": ("succeeded", 2),  # run again, as a new attempt
            "restart_false": ("lost", 1),
            "purge": ("lost", 1),
            "stop": ("held", 1),  # for the operator: release re-runs it, skip or kill ends it
        }, doc["jobs"]
        assert lines(marks) == sorted(["restart_true", "restart_true", "restart_false", "purge", "stop"])
    finally:
        _kill_all(pids)


def _kill_all(pids: Path) -> None:
    """Kill the jobs a SIGKILLed worker left behind (they are session leaders: kill their groups)."""
    for pid in lines(pids):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(int(pid), signal.SIGKILL)


async def test_destinations_listing_counts_the_workers_of_the_cloud(
    client: ApiClient, workers: Workers, uid: str
) -> None:
    dest = f"l{uid}"
    await client.call("apply", definitions={"destination": {dest: {"relay": "main"}}})
    for _ in range(2):
        workers.start(dest)

    async def two_workers() -> bool:
        rows = {d["name"]: d for d in await client.call("destinations")}
        return bool(rows.get(dest, {}).get("workers") == 2)

    await eventually(two_workers, f"two workers listed for {dest}", deadline_s=30)
