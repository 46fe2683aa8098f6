"""The manager's core: one loop that owns every run in memory and commits its changes in groups.

Everything that changes state arrives as an item on one queue: events from executors, replies to
dispatches, operator commands, watchdog ticks. Each turn of the loop takes every item that is ready,
applies them in memory, writes all their changes in one fenced transaction, and only then sends what
follows from them: acks, dispatches, progress and command replies (commit before send).

Here: the queue's items, the turn, recovery at takeover, and the moves of jobs and runs between states
that everything acting on them shares. What acts on them lives beside it: ``engine.events`` (what
executors, relays and agents report), ``engine.commands`` and ``engine.control`` (the operator's
commands), ``engine.dispatch`` (ready jobs out to their targets, attempts in flight) and ``engine.flow``
(the jobnet language).
"""

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from engine import commands, control, events, flowstore, paths, schedule_store
from engine.admission import Admission
from engine.changes import Changes
from engine.dispatch import Dispatch
from engine.flow import Flow
from engine.runs import Attempt, JobRun, Run
from engine.schedules import Clock, ScheduleBook, SystemClock
from engine.settings import ManagerSettings
from engine.sitefile import MAINTENANCE_KEY
from engine.states import ACTIVE_JOB_STATES, JobState, RunState
from engine.store import Lease, Store
from engine.targets import AgentState, Targets
from schemas.definitions import Jobnet, parse_definitions
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope

logger = logging.getLogger(__name__)

#: Seconds between purges of history older than the retention.
RETENTION_CHECK_S = 3600.0
#: Most items applied in one transaction.
MAX_ITEMS_PER_TICK = 5000


@dataclass(frozen=True, slots=True)
class EventsIn:
    """A batch of events from an executor or relay; ``reply`` gets the ack after commit."""

    envelopes: list[Envelope]
    reply: str


@dataclass(frozen=True, slots=True)
class DispatchReply:
    """A relay or agent answered a dispatch batch."""

    accepted: list[str]
    refused: list[tuple[str, str, str]]  #: (attempt ID, code, reason)
    #: the accepted attempts a relay already put in their destination's JetStream queue
    queued: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class DispatchUnreachable:
    """Nobody answered a dispatch batch."""

    attempt_ids: list[str]
    reason: str


@dataclass(frozen=True, slots=True)
class Registered:
    """An agent announced itself or sent a heartbeat with its inventory."""

    envelope: Envelope


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: resend unaccepted dispatches, renew the lease."""


@dataclass(slots=True)
class Command:
    """An operator command that changes state; ``done`` gets the result after commit."""

    verb: str
    args: dict[str, Any]
    done: asyncio.Future[dict[str, Any]] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    #: who asked, and from where (recorded in the audit log); empty for the manager's own commands
    caller: dict[str, Any] = field(default_factory=dict)


Item = EventsIn | DispatchReply | DispatchUnreachable | Registered | Tick | Command


@dataclass(slots=True)
class Outbound:
    """What one turn sends once its changes are committed."""

    acks: list[tuple[str, list[str]]] = field(default_factory=list)
    dispatches: list[tuple[str, Envelope]] = field(default_factory=list)
    progress: dict[str, Run] = field(default_factory=dict)
    changed_jobs: dict[str, dict[str, JobRun]] = field(default_factory=dict)
    results: list[tuple[asyncio.Future[dict[str, Any]], dict[str, Any] | BaseException]] = field(default_factory=list)
    ended_runs: list[Run] = field(default_factory=list)
    #: kill requests to publish: (control subject, envelope)
    controls: list[tuple[str, Envelope]] = field(default_factory=list)


class Sender(Protocol):
    """Where the core hands what it sends after commit (the service wires it to NATS)."""

    async def ack(self, reply: str, eids: list[str]) -> None:
        """Ack committed events to whoever sent them."""

    def dispatch(self, dispatches: list[tuple[str, Envelope]]) -> None:
        """Send committed dispatches (``(subject, envelope)`` pairs) without blocking the core."""

    async def progress(self, run: Run, jobs: list[JobRun]) -> None:
        """Publish a run's committed changes for anyone watching it."""

    async def control(self, subject: str, envelope: Envelope) -> None:
        """Publish a kill request to whoever runs an attempt."""


class Core:
    """Owns the runs of one active manager."""

    def __init__(
        self,
        store: Store,
        settings: ManagerSettings,
        lease: Lease,
        sender: Sender,
        queue: "asyncio.Queue[Item]",
        clock: Clock | None = None,
    ) -> None:
        #: calendars and schedules; ``clock`` is the scheduling clock (tests inject one they control)
        self.schedules = ScheduleBook(clock or SystemClock())
        self._store = store
        self._settings = settings
        self._lease = lease
        self._sender = sender
        self.queue = queue
        self.runs: dict[str, Run] = {}
        self.jobnets: dict[str, tuple[int, Jobnet, str]] = {}
        self.targets = Targets()
        self.admission = Admission()
        #: the ready jobs, and the attempts in flight until they end
        self.dispatch = Dispatch(self, settings)
        self._last_purge = 0.0
        #: attempts asked to die and not yet ended: each sign of life from one (it started anyway, having been
        #: queued; it still beats, the request having been lost) sends the kill again
        self.killed: dict[str, str] = {}  # attempt ID -> its target
        #: dedupe keys of runs started by this manager (older ones are looked up in the database)
        self.dedupe: dict[str, str] = {}
        self._last_run_id = 0
        self._last_renewal = time.time()
        self.maintenance = False
        #: variables, flow units, judgment, retries and timers (the jobnet language)
        self.flow = Flow(self)

    @property
    def epoch(self) -> int:
        """The lease epoch this core acts under."""
        return self._lease.epoch

    @property
    def server_id(self) -> str:
        """The server ID this core acts for."""
        return self._settings.server_id

    # -- start-up --------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Load definitions and every unfinished run from the site database."""
        nets, dests = await self._store.latest_definitions()
        for name, (version, body, digest) in nets.items():
            self.jobnets[name] = (version, _jobnet_from_body(name, body), digest)
        defs: dict[str, dict[str, Any]] = {"destination": {n: orjson.loads(b) for n, b in dests.items()}}
        for kind, name, body in await self._store.agent_definitions():
            defs.setdefault(kind, {})[name] = orjson.loads(body)
        applied = parse_definitions(defs)
        applied.jobnets.update({name: net for name, (_, net, _) in self.jobnets.items()})
        self.targets.define(applied)
        self.admission.define(applied)
        for lock, holder, weight in await self._store.lock_holders():
            self.admission.restore_holder(lock, holder, weight)
        self.schedules.load(await schedule_store.load(self._store))
        for name, state, inventory, used_at in await self._store.agent_rows():
            status = self.targets.agent(name)
            status.state, status.used_at = AgentState(state), used_at
            events.take_inventory(status, orjson.loads(inventory))
        self._last_run_id = await self._store.last_run_id()
        # Maintenance mode is a committed site setting, so a takeover keeps it.
        self.maintenance = (await self._store.site_settings()).get(MAINTENANCE_KEY) == "on"
        if self.maintenance:
            logger.warning("the site is in maintenance mode: nothing new starts until it is turned off")
        mono = time.monotonic()
        for raw in await self._store.unfinished_runs():
            run = await self._restore_run(raw, mono)
            if run is not None:
                self.runs[run.run_id] = run
        resend = len(self.dispatch.unconfirmed)
        logger.info(
            "recovered %d unfinished runs, %d attempts in flight (%d to confirm)",
            len(self.runs),
            len(self.dispatch.attempts),
            resend,
        )

    async def _restore_run(self, raw: dict[str, Any], mono: float) -> Run | None:
        body = await self._store.jobnet_version_body(raw["jobnet"], raw["version"])
        if body is None:
            logger.error("run %s: jobnet %s version %s is missing", raw["run_id"], raw["jobnet"], raw["version"])
            return None
        jobnet = _jobnet_from_body(raw["jobnet"], body)
        run = Run.new(raw["run_id"], jobnet, raw["version"], raw["created_at"], raw["params"])
        run.tenant, run.state, run.ended_at = raw["tenant"], RunState(raw["state"]), raw["ended_at"]
        run.held, run.dedupe_key = raw["held"], raw["dedupe_key"]
        run.stopping, run.reopened_at = raw["stopping"], raw["reopened_at"]
        for job_id, row in raw["jobs"].items():
            job = run.jobs.get(job_id)
            if job is not None:
                await self._restore_job(run, job, row, mono)
        run.recount()
        self.flow.restore(run, await flowstore.load(self._store, run.run_id))
        for job in run.jobs.values():
            job.pending = paths.pending_of(run.jobs, job)
            if job.state == JobState.READY:
                self.dispatch.ready.append((run, job))
        # Anything dispatched but never confirmed is sent again at once under the same attempt ID.
        for aid, (_, job) in self.dispatch.unconfirmed.items():
            attempt = job.attempt_of(aid)
            if attempt is not None:
                attempt.seen_at = 0.0
        return run

    async def _restore_job(self, run: Run, job: JobRun, row: tuple[Any, ...], mono: float) -> None:
        state, job.attempts, job.exit_code, job.started_at, job.ended_at, job.reason, bypassed = row[:7]
        job.state, job.bypassed = JobState(state), bool(bypassed)
        if row[7] is not None:
            job.current = _attempt_from_row(row[7:])
        elif job.job.broadcast and job.state in ACTIVE_JOB_STATES:
            for member_row in await self._store.round_attempts(run.run_id, job.id, job.attempts):
                member = _attempt_from_row(member_row)
                job.members[member.target.partition(":")[2]] = member
        if job.state in ACTIVE_JOB_STATES:
            self.admission.restore_running(run, job, [a.target for a in job.live_attempts()])
            for attempt in job.live_attempts():
                attempt.seen_at = mono  # heartbeats are counted again from the takeover
                if not attempt.status:
                    self.dispatch.track(run, job, attempt)
                    if job.reason == control.KILL_REQUESTED:
                        self.killed[attempt.attempt_id] = attempt.target  # asked again on its next beat

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take items, apply, commit, send; until cancelled or the lease is lost (LeaseLostError)."""
        if self.dispatch.ready:
            await self.queue.put(Tick())
        while True:
            items = [await self.queue.get()]
            while len(items) < MAX_ITEMS_PER_TICK and not self.queue.empty():
                items.append(self.queue.get_nowait())
            try:
                await self.turn(items)
            finally:
                for _ in items:
                    self.queue.task_done()

    async def turn(self, items: list[Item]) -> None:
        """Apply a group of items and commit them as one transaction."""
        changes, out = Changes(), Outbound()
        visiting = await self._prepare(items)
        now, mono = time.time(), time.monotonic()
        for item in items:
            self._apply(item, changes, out, now, mono)
        self.dispatch.offer(changes, out, now, mono)
        while self.flow.again:  # flow units ended (or started runs) inside dispatch: offer what they made ready
            self.flow.again = False
            self.dispatch.offer(changes, out, now, mono)
        for run_id in visiting:  # finished runs loaded for a command that did not reopen them
            if (run := self.runs.get(run_id)) is not None and run.state != RunState.RUNNING:
                self.runs.pop(run_id)
        renew_due = now - self._last_renewal > self._settings.lease_s / 3
        if changes or renew_due:
            try:
                renew_until = time.time() + self._settings.lease_s if renew_due else None
                await self._store.commit(changes, self._lease.holder, self._lease.epoch, renew_until)
            except BaseException:
                for fut, _ in out.results:
                    if not fut.done():
                        fut.set_exception(WireError(ErrorCode.UNAVAILABLE, "manager stopped before committing", True))
                raise
            if renew_due:
                self._last_renewal = now
        await self._send(out)

    def _apply(self, item: Item, ch: Changes, out: Outbound, now: float, mono: float) -> None:
        if isinstance(item, EventsIn):
            events.on_batch(self, item, ch, out, now, mono)
        elif isinstance(item, DispatchReply):
            events.on_dispatch_reply(self, item, ch, out, now, mono)
        elif isinstance(item, DispatchUnreachable):
            events.on_unreachable(self, item, ch)
        elif isinstance(item, Registered):
            events.on_registered(self, item.envelope, ch, now)
        elif isinstance(item, Tick):
            self._watchdog(ch, out, now, mono)
        else:
            commands.handle(self, item, ch, out, now)

    def _watchdog(self, ch: Changes, out: Outbound, now: float, mono: float) -> None:
        """Send unconfirmed and relay-held dispatches again; apply the restart table to silent agents' attempts."""
        s = self._settings
        if s.retention_days > 0 and now - self._last_purge > RETENTION_CHECK_S:
            self._last_purge = now
            ch.purge_before = now - s.retention_days * 86400
        self.dispatch.resend(out, now, mono)
        for run, job, attempt in self.dispatch.silent(mono):
            events.lose(self, run, job, attempt, f"no heartbeat for {s.agent_lost_after_s:g}s", ch, out, now)
        self.flow.tick(ch, out, now)

    async def _prepare(self, items: list[Item]) -> list[str]:
        """Load what commands need from the database before the turn: finished runs, earlier dedupe keys."""
        visiting: list[str] = []
        for item in items:
            if not isinstance(item, Command):
                continue
            run_id = item.args.get("run")
            if (
                item.verb in commands.RUN_COMMANDS
                and isinstance(run_id, str)
                and run_id not in self.runs
                and run_id.isdigit()
            ):
                for raw in await self._store.load_runs([int(run_id)]):
                    run = await self._restore_run(raw, time.monotonic())
                    if run is not None:
                        self.runs[run.run_id] = run
                        visiting.append(run.run_id)
            key = item.args.get("dedupe")
            if item.verb == "run" and isinstance(key, str) and key not in self.dedupe:
                found = await self._store.run_by_dedupe_key(key)
                if found is not None:
                    self.dedupe[key] = found
        fires = [i.args["fire"] for i in items if isinstance(i, Command) and i.verb == "run" and "fire" in i.args]
        await self.schedules.prepare(self._store, fires)
        return visiting

    async def _send(self, out: Outbound) -> None:
        for reply, eids in out.acks:
            await self._sender.ack(reply, eids)
        for subject, env in out.controls:
            await self._sender.control(subject, env)
        if out.dispatches:
            self._sender.dispatch(out.dispatches)
        for run_id, jobs in out.changed_jobs.items():
            await self._sender.progress(out.progress[run_id], list(jobs.values()))
        for fut, result in out.results:
            if fut.done():
                continue
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)
        for run in out.ended_runs:
            self.runs.pop(run.run_id, None)

    # -- jobs and runs between states --------------------------------------------------------------
    # Package-internal: engine.events, engine.commands, engine.control and engine.flow change runs
    # through these.

    def changed(self, run: Run, job: JobRun, ch: Changes, out: Outbound) -> None:
        """Write the job's row this turn and publish its new state."""
        ch.job(run, job)
        if job.flow.written:
            ch.flow.job(run, job)  # its flow row too (a rerun's reset clears it)
        out.progress[run.run_id] = run
        out.changed_jobs.setdefault(run.run_id, {})[job.id] = job

    def waiting_jobs(self) -> list[tuple[str, str]]:
        """Ready jobs that wait (for an agent, a lock or a limit), as ``("run:job", reason)``."""
        return [(f"{run.run_id}:{job.id}", job.reason) for run, job in self.dispatch.ready if job.reason]

    def touch(self, run: Run, out: Outbound) -> None:
        """Publish the run's state with this turn's progress even if no job changed."""
        out.progress[run.run_id] = run
        out.changed_jobs.setdefault(run.run_id, {})

    def requeue_ready(self, run: Run) -> None:
        """Offer the run's ready jobs for dispatch again (after a release or a rerun)."""
        self.dispatch.ready.extend((run, j) for j in run.jobs.values() if j.state == JobState.READY)

    def reopen(self, run: Run, ch: Changes, out: Outbound, now: float) -> None:
        """A finished run runs again (rerun, or a status an operator set)."""
        run.state, run.ended_at, run.stopping, run.reopened_at = RunState.RUNNING, None, False, now
        run.recount()
        self.runs[run.run_id] = run
        ch.run(run)
        self.flow.reopened(run, ch, now)
        self.touch(run, out)
        self.requeue_ready(run)

    def open_run(self, name: str, params: dict[str, str], ch: Changes, out: Outbound, now: float) -> Run:
        """Create a run of the latest version of an applied jobnet (its parameters' defaults filled in)."""
        version, jobnet, _ = self.jobnets[name]
        self._last_run_id += 1
        run = Run.new(str(self._last_run_id), jobnet, version, now, self.flow.params_for(jobnet, params))
        self.runs[run.run_id] = run
        ch.run(run)
        for job in run.jobs.values():
            self.changed(run, job, ch, out)
            if job.state == JobState.READY:
                self.dispatch.ready.append((run, job))
        return run

    def end_job(
        self,
        run: Run,
        job: JobRun,
        state: JobState,
        exit_code: int | None,
        reason: str,
        ch: Changes,
        out: Outbound,
        now: float,
    ) -> None:
        """A job reached a final state: release or skip what comes after it, end the run if settled."""
        run.set_state(job, state)
        job.exit_code = exit_code
        job.ended_at = now
        job.reason = reason
        for attempt in job.live_attempts():
            self.dispatch.untrack(attempt.attempt_id)
        ch.lock_gives += self.admission.leave(run, job)
        self.changed(run, job, ch, out)
        ready, ended = paths.settle(run, job)
        for unit in ready:
            self.dispatch.ready.append((run, unit))
            self.changed(run, unit, ch, out)
        for unit in ended:
            unit.ended_at = now
            if unit.flow.untaken:
                ch.flow.job(run, unit)
            self.changed(run, unit, ch, out)
        self.maybe_end_run(run, ch, out, now)

    def park(self, run: Run, job: JobRun, state: JobState, reason: str, ch: Changes, out: Outbound) -> None:
        """A job's attempt ended but the job did not (it waits to be retried): free what the attempt held."""
        for attempt in job.live_attempts():
            self.dispatch.untrack(attempt.attempt_id)
        ch.lock_gives += self.admission.leave(run, job)
        run.set_state(job, state)
        job.reason = reason
        self.changed(run, job, ch, out)

    def maybe_end_run(self, run: Run, ch: Changes, out: Outbound, now: float) -> None:
        """End the run if every job is final."""
        if run.state != RunState.RUNNING or not run.is_settled():
            return
        run.state = run.final_state()
        run.ended_at = now
        ch.run(run)
        ch.lock_gives += self.admission.end_run(run)
        out.progress[run.run_id] = run
        out.changed_jobs.setdefault(run.run_id, {})
        out.ended_runs.append(run)
        logger.info("run %s (%s) %s", run.run_id, run.jobnet.name, run.state)
        self.flow.run_ended(run, ch, out, now)


def _attempt_from_row(row: tuple[Any, ...]) -> Attempt:
    """An attempt from ``(attempt_id, n, target, dispatched, accepted, started, host, pid, status, queued)``."""
    aid, n, target, dispatched_at, accepted_at, started_at, host, pid, status, queued_at = row
    attempt = Attempt(aid, n, target, dispatched_at, accepted_at, started_at, host=host, pid=pid)
    attempt.status, attempt.queued_at = status, queued_at
    return attempt


def _jobnet_from_body(name: str, body: str) -> Jobnet:
    return parse_definitions({"jobnet": {name: orjson.loads(body)}}).jobnets[name]
