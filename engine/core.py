"""The manager's core: one loop that owns every run in memory and commits its changes in groups.

Everything that changes state arrives as an item on one queue: events from executors, replies to
dispatches, operator commands, watchdog ticks. Each turn of the loop takes every item that is ready,
applies them in memory, writes all their changes in one fenced transaction, and only then sends what
follows from them: acks, dispatches, progress and command replies (commit before send).
"""

import asyncio
import hashlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from engine import control, flowstore, paths, schedule_store, tenancy
from engine.admission import Admission
from engine.flow import Flow
from engine.runs import Attempt, JobRun, Run
from engine.schedules import Clock, ScheduleBook, SystemClock
from engine.settings import ManagerSettings
from engine.sitefile import MAINTENANCE_KEY
from engine.states import ACTIVE_JOB_STATES, STATE_OF_STATUS, JobState, RunState
from engine.store import Changes, Lease, Store
from engine.targets import AgentState, AgentStatus, LostOutcome, Targets
from engine.tokens import AttemptTokens
from schemas import subjects
from schemas.definitions import (
    DefinitionError,
    Definitions,
    Jobnet,
    parse_definitions,
)
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Finished, JobSpec, JobStatus, Kind, attempt_id, job_run_id
from schemas.names import is_valid_name
from schemas.unit_checks import cross_errors

logger = logging.getLogger(__name__)

#: Commands that act on one run (loaded from the database first if it already ended).
RUN_COMMANDS = frozenset({"hold", "release", "skip", "kill", "rerun", "set_status"})
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
        self._attempts: dict[str, tuple[Run, JobRun]] = {}
        #: dispatched attempts that no relay or agent has confirmed yet: the watchdog sends them again
        self._unconfirmed: dict[str, tuple[Run, JobRun]] = {}
        #: attempts a relay holds but has not put in JetStream (its downstream is away, or it died)
        self._held: dict[str, tuple[Run, JobRun]] = {}
        #: attempts on standard agents, watched for heartbeats
        self._on_agents: dict[str, tuple[Run, JobRun]] = {}
        self._ready: list[tuple[Run, JobRun]] = []
        self.jobnets: dict[str, tuple[int, Jobnet, str]] = {}
        self.targets = Targets()
        self.admission = Admission()
        self._last_purge = 0.0
        self._tokens = AttemptTokens.for_site(settings.site_dir)
        #: attempts an operator killed: one that starts anyway (it was queued) is killed again at once
        self.killed: set[str] = set()
        #: dedupe keys of runs started by this manager (older ones are looked up in the database)
        self._dedupe: dict[str, str] = {}
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
            _take_inventory(status, orjson.loads(inventory))
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
        resend = len(self._unconfirmed)
        logger.info(
            "recovered %d unfinished runs, %d attempts in flight (%d to confirm)",
            len(self.runs),
            len(self._attempts),
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
        for job_id, row in raw["jobs"].items():
            job = run.jobs.get(job_id)
            if job is not None:
                await self._restore_job(run, job, row, mono)
        run.recount()
        self.flow.restore(run, await flowstore.load(self._store, run.run_id))
        for job in run.jobs.values():
            job.pending = paths.pending_of(run.jobs, job)
            if job.state == JobState.READY:
                self._ready.append((run, job))
        # Anything dispatched but never confirmed is sent again at once under the same attempt ID.
        for aid, (_, job) in self._unconfirmed.items():
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
                    self._track(run, job, attempt)

    # -- the loop --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Take items, apply, commit, send; until cancelled or the lease is lost (LeaseLostError)."""
        if self._ready:
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
        self._dispatch_ready(changes, out, now, mono)
        while self.flow.again:  # flow units ended (or started runs) inside dispatch: offer what they made ready
            self.flow.again = False
            self._dispatch_ready(changes, out, now, mono)
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
            eids = [eid for env in item.envelopes if (eid := self._on_event(env, ch, out, now, mono))]
            if item.reply:
                out.acks.append((item.reply, eids))
        elif isinstance(item, DispatchReply):
            self._on_dispatch_reply(item, ch, out, now, mono)
        elif isinstance(item, DispatchUnreachable):
            for aid in item.attempt_ids:
                found = self._attempts.get(aid)
                if found and found[1].state == JobState.DISPATCHED and found[1].reason != item.reason:
                    found[1].reason = item.reason
                    ch.job(*found)
        elif isinstance(item, Registered):
            self._on_registered(item.envelope, ch, now)
        elif isinstance(item, Tick):
            self._watchdog(ch, out, now, mono)
        else:
            try:
                result = self._on_command(item, ch, out, now)
            except WireError as exc:
                out.results.append((item.done, exc))
                self._audit(item, f"refused: {exc.message}", ch, now)
            else:
                out.results.append((item.done, result))
                self._audit(item, "ok", ch, now)

    def _audit(self, cmd: Command, outcome: str, ch: Changes, now: float) -> None:
        if not cmd.caller:
            return  # the manager's own commands (schedules) are in the run history, not the audit log
        who = f"{cmd.caller.get('user', '?')}"
        origin = f"{cmd.caller.get('host', '?')} pid {cmd.caller.get('pid', '?')}"
        detail = {k: v for k, v in cmd.args.items() if k != "definitions"}
        if "definitions" in cmd.args:
            detail["definitions"] = _summary(cmd.args["definitions"])
        target = str(cmd.args.get("run") or cmd.args.get("jobnet") or cmd.args.get("name") or "")
        if cmd.args.get("job"):
            target += f" job {cmd.args['job']}"
        ch.audit.append((now, who, origin, cmd.verb, target, orjson.dumps(detail, default=str).decode(), outcome))

    async def _prepare(self, items: list[Item]) -> list[str]:
        """Load what commands need from the database before the turn: finished runs, earlier dedupe keys."""
        visiting: list[str] = []
        for item in items:
            if not isinstance(item, Command):
                continue
            run_id = item.args.get("run")
            if item.verb in RUN_COMMANDS and isinstance(run_id, str) and run_id not in self.runs and run_id.isdigit():
                for raw in await self._store.load_runs([int(run_id)]):
                    run = await self._restore_run(raw, time.monotonic())
                    if run is not None:
                        self.runs[run.run_id] = run
                        visiting.append(run.run_id)
            key = item.args.get("dedupe")
            if item.verb == "run" and isinstance(key, str) and key not in self._dedupe:
                found = await self._store.run_by_dedupe_key(key)
                if found is not None:
                    self._dedupe[key] = found
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

    def changed(self, run: Run, job: JobRun, ch: Changes, out: Outbound) -> None:
        """Write the job's row this turn and publish its new state."""
        ch.job(run, job)
        if job.flow.written:
            ch.flow.job(run, job)  # its flow row too (a rerun's reset clears it)
        out.progress[run.run_id] = run
        out.changed_jobs.setdefault(run.run_id, {})[job.id] = job

    # Package-internal (changed, touch, requeue_ready, reopen, end_job, maybe_end_run): engine.control's
    # operator commands change runs through these, as events do.

    def waiting_jobs(self) -> list[tuple[str, str]]:
        """Ready jobs that wait (for an agent, a lock or a limit), as ``("run:job", reason)``."""
        return [(f"{run.run_id}:{job.id}", job.reason) for run, job in self._ready if job.reason]

    def touch(self, run: Run, out: Outbound) -> None:
        """Publish the run's state with this turn's progress even if no job changed."""
        out.progress[run.run_id] = run
        out.changed_jobs.setdefault(run.run_id, {})

    def requeue_ready(self, run: Run) -> None:
        """Offer the run's ready jobs for dispatch again (after a release or a rerun)."""
        self._ready.extend((run, j) for j in run.jobs.values() if j.state == JobState.READY)

    def reopen(self, run: Run, ch: Changes, out: Outbound) -> None:
        """A finished run runs again (rerun, or a status an operator set)."""
        run.state, run.ended_at, run.stopping = RunState.RUNNING, None, False
        run.recount()
        self.runs[run.run_id] = run
        ch.run(run)
        self.touch(run, out)
        self.requeue_ready(run)

    # -- events ----------------------------------------------------------------------------------

    def _on_event(self, env: Envelope, ch: Changes, out: Outbound, now: float, mono: float) -> str | None:
        """Apply one event; return its ID if it may be acked (it is committed or changes nothing)."""
        eid, aid = env.payload.get("eid"), env.payload.get("attempt_id")
        if not isinstance(eid, str) or not isinstance(aid, str):
            logger.warning("event %s without eid or attempt_id dropped", env.kind)
            return None
        found = self._attempts.get(aid)
        if found is None:
            if env.kind == Kind.STARTED and aid in self.killed:
                # Killed while it waited in its destination's queue, and a worker took it anyway.
                kill = Envelope(Kind.CONTROL, self.server_id, {"action": "kill"}, self.epoch, run_id=env.run_id, ts=now)
                out.controls.append((subjects.control(aid), kill))
            logger.debug("event %s for attempt %s that is not in flight: acked, changes nothing", env.kind, aid)
            return eid
        run, job = found
        attempt = job.attempt_of(aid)
        if attempt is None or attempt.status:
            logger.info("stale event %s for attempt %s discarded", env.kind, aid)
            return eid
        if not self._tokens.check(env.payload.get("token"), aid, attempt.target, env.epoch):
            # Acked all the same, so that no outbox on the way keeps it for ever; it changes nothing.
            logger.warning("event %s for attempt %s refused: not the token it was dispatched with", env.kind, aid)
            return eid
        attempt.seen_at = mono
        if env.kind == Kind.STARTED:
            self._on_started(run, job, attempt, env, ch, out, now)
        elif env.kind == Kind.FINISHED:
            try:
                fin = Finished.from_wire(env.payload)
            except ValueError as exc:
                logger.warning("malformed finished event for %s refused: %s", aid, exc)
                return None
            attempt.reported_at = env.ts or now
            self._on_finished(run, job, attempt, fin, ch, out, now)
        elif env.kind == Kind.ACCEPTED and attempt.accepted_at is None:
            self._confirm(attempt, now)
            ch.job(run, job)
        elif env.kind == Kind.REFUSED:
            code, reason = str(env.payload.get("code", "")), str(env.payload.get("reason", ""))
            self._on_refused(run, job, attempt, code, reason, ch, out, now)
        return eid

    def _on_started(
        self, run: Run, job: JobRun, attempt: Attempt, env: Envelope, ch: Changes, out: Outbound, now: float
    ) -> None:
        host, pid = env.payload.get("host"), env.payload.get("pid")
        attempt.host = host if isinstance(host, str) else ""
        attempt.pid = pid if isinstance(pid, int) else None
        self._confirm(attempt, now)
        self._held.pop(attempt.attempt_id, None)
        if job.state == JobState.DISPATCHED:
            job.state = JobState.RUNNING
            job.started_at = attempt.started_at = env.ts or now
            job.reason = ""
            self.changed(run, job, ch, out)
        else:
            ch.job(run, job)  # a redelivered attempt started again elsewhere: record where

    def _on_finished(
        self, run: Run, job: JobRun, attempt: Attempt, fin: Finished, ch: Changes, out: Outbound, now: float
    ) -> None:
        state = STATE_OF_STATUS[fin.status]
        attempt.finished_at = now
        attempt.status = str(fin.status)
        attempt.exit_code = fin.exit_code
        attempt.reason = fin.reason
        if fin.host:
            attempt.host = fin.host
        if attempt.started_at is None:
            attempt.started_at = max((attempt.reported_at or now) - fin.duration_s, attempt.dispatched_at)
            job.started_at = attempt.started_at
        attempt.output = (fin.stdout, fin.stderr, fin.truncated_bytes)
        if fin.status == JobStatus.LOST:
            self._lose(run, job, attempt, fin.reason or "its executor was lost", ch, out, now)
        elif job.members:
            self._end_member(run, job, attempt, ch, out, now)
        else:
            self.flow.attempt_ended(run, job, attempt, fin, state, ch, out, now)

    def _end_member(self, run: Run, job: JobRun, attempt: Attempt, ch: Changes, out: Outbound, now: float) -> None:
        """A broadcast member ended; the job ends when every member did, succeeding only if all did."""
        self._untrack(attempt.attempt_id)
        if any(not m.status for m in job.members.values()):
            self.changed(run, job, ch, out)
            return
        failed = sorted(name for name, m in job.members.items() if m.status != JobStatus.SUCCEEDED)
        if not failed:
            self.end_job(run, job, JobState.SUCCEEDED, 0, "", ch, out, now)
            return
        codes = [m.exit_code for m in job.members.values() if m.exit_code not in (0, None)]
        reason = "did not succeed on " + ", ".join(f"{n} ({job.members[n].status})" for n in failed)
        self.end_job(run, job, JobState.FAILED, codes[0] if codes else None, reason, ch, out, now)

    def _lose(self, run: Run, job: JobRun, attempt: Attempt, why: str, ch: Changes, out: Outbound, now: float) -> None:
        """An attempt's executor was lost: apply the restart table (the target's attribute, the job's setting)."""
        attempt.status, attempt.reason = str(JobStatus.LOST), why
        attempt.finished_at = attempt.finished_at or now
        if job.members:
            self._end_member(run, job, attempt, ch, out, now)
            return
        self._untrack(attempt.attempt_id)
        outcome = self.targets.lost_outcome(job.job, attempt.target)
        lost = f"attempt {attempt.n} on {attempt.host or attempt.target} lost ({why})"
        logger.warning("run %s job %s: %s: %s", run.run_id, job.id, lost, outcome)
        ch.lock_gives += self.admission.leave(run, job)
        if outcome == LostOutcome.RESTART:
            job.reason = f"{lost}; running again"
            run.set_state(job, JobState.READY)
            self.changed(run, job, ch, out)
            self._ready.append((run, job))
        elif outcome == LostOutcome.HOLD:
            job.reason = f"{lost}; held for the operator"
            run.set_state(job, JobState.HELD)
            self.changed(run, job, ch, out)
        else:
            self.end_job(run, job, JobState.LOST, None, lost, ch, out, now)

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
            self._untrack(attempt.attempt_id)
        ch.lock_gives += self.admission.leave(run, job)
        self.changed(run, job, ch, out)
        ready, ended = paths.settle(run, job)
        for unit in ready:
            self._ready.append((run, unit))
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
            self._untrack(attempt.attempt_id)
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

    def _on_refused(
        self, run: Run, job: JobRun, attempt: Attempt, code: str, reason: str, ch: Changes, out: Outbound, now: float
    ) -> None:
        if attempt.status or job.state != JobState.DISPATCHED:
            return
        if code in (ErrorCode.UNAVAILABLE, ErrorCode.CONFLICT):
            # Back-pressure (a relay's backlog is full) or a stale epoch: keep the attempt; the watchdog
            # offers it again (a manager that really lost its lease finds out at its next commit).
            if job.reason != reason:
                job.reason = reason or "target busy"
                ch.job(run, job)
            return
        attempt.status, attempt.reason, attempt.finished_at = str(JobStatus.ERROR), reason, now
        if job.members:
            self._end_member(run, job, attempt, ch, out, now)
        else:
            self.end_job(run, job, JobState.FAILED, None, f"refused: {reason}", ch, out, now)

    def _on_dispatch_reply(self, item: DispatchReply, ch: Changes, out: Outbound, now: float, mono: float) -> None:
        queued = set(item.queued)
        for aid in item.accepted:
            found = self._attempts.get(aid)
            attempt = found[1].attempt_of(aid) if found is not None else None
            if found is None or attempt is None:
                continue
            run, job = found
            # Kept in memory and written with the job's next change: a confirmation lost in a failover
            # only costs a harmless resend under the same attempt ID.
            self._confirm(attempt, now)
            attempt.seen_at = mono
            if aid in queued:
                attempt.queued_at = attempt.queued_at or now
                self._held.pop(aid, None)
            elif attempt.target.startswith("dest:") and attempt.started_at is None and attempt.queued_at is None:
                self._held[aid] = found
            if job.reason:
                job.reason = ""
                ch.job(run, job)
        for aid, code, reason in item.refused:
            found = self._attempts.get(aid)
            attempt = found[1].attempt_of(aid) if found is not None else None
            if found is not None and attempt is not None:
                self._on_refused(found[0], found[1], attempt, code, reason, ch, out, now)

    def _on_registered(self, env: Envelope, ch: Changes, now: float) -> None:
        name, kind = env.payload.get("name"), env.payload.get("kind", "agent")
        if not isinstance(name, str) or not isinstance(kind, str):
            logger.warning("registration without a name dropped")
            return
        inventory = orjson.dumps(env.payload, default=str).decode()
        ch.agents.append((name, kind, inventory, now, now, str(AgentState.EFFECTIVE)))
        _take_inventory(self.targets.agent(name), env.payload)

    # -- dispatch ----------------------------------------------------------------------------------

    def _dispatch_ready(self, ch: Changes, out: Outbound, now: float, mono: float) -> None:
        if self.maintenance or not self._ready:
            return
        ready, self._ready = self._ready, []
        for run, job in ready:
            if job.state != JobState.READY or run.state != RunState.RUNNING or run.held:
                continue  # a held run's ready jobs are offered again when it is released
            if self.flow.take(run, job, ch, out, now):
                continue  # a flow unit the manager runs itself, or a job that cannot start
            agents = self._agents_for(job)
            targets = [f"agent:{a}" for a in agents] if not isinstance(agents, str) and agents else []
            if not isinstance(agents, str) and not agents:
                targets = [f"dest:{job.job.dest}"]
            wait = agents if isinstance(agents, str) else self.admission.refusal(run, job, targets)
            if wait:  # no agent takes it now, a lock is taken or a limit reached: it waits, saying why
                if job.reason != wait:
                    job.reason = wait
                    self.changed(run, job, ch, out)
                self._ready.append((run, job))
                continue
            assert not isinstance(agents, str)
            ch.lock_takes += self.admission.admit(run, job, targets, now)
            job.reason = ""
            job.attempts += 1
            job.current, job.members = None, {}
            job.state = JobState.DISPATCHED
            job.started_at = job.ended_at = job.exit_code = None
            sid = self._settings.server_id
            if job.job.broadcast:
                for name in agents:
                    aid = attempt_id(sid, run.run_id, f"{job.id}:{name}", job.attempts)
                    job.members[name] = Attempt(aid, job.attempts, f"agent:{name}", now, seen_at=mono)
            else:
                target = f"agent:{agents[0]}" if agents else f"dest:{job.job.dest}"
                aid = attempt_id(sid, run.run_id, job.id, job.attempts)
                job.current = Attempt(aid, job.attempts, target, now, seen_at=mono)
            for attempt in job.live_attempts():
                self._track(run, job, attempt)
                out.dispatches.append(self._dispatch_envelope(run, job, attempt, now))
            for name in agents:
                status = self.targets.agent(name)
                status.used_at = now
                status.running += 1  # until its next heartbeat says how busy it is
                ch.agent_states[name] = (name, now, str(status.state), now)
            self.changed(run, job, ch, out)

    def _agents_for(self, job: JobRun) -> list[str] | str:
        """The agents a job goes to now ([] for a destination), or why it must wait."""
        spec = job.job
        if spec.agent is not None:
            refusal = self.targets.refusal(spec.agent)
            return refusal or [spec.agent]
        if spec.group is None:
            return []
        if spec.broadcast:
            members = self.targets.members(spec.group)
        else:
            picked = self.targets.pick(spec.group)
            members = [picked] if picked is not None else []
        return members or f"no agent of group {spec.group} takes jobs now"

    def _dispatch_envelope(self, run: Run, job: JobRun, attempt: Attempt, now: float) -> tuple[str, Envelope]:
        spec_job = job.job
        kind, _, target = attempt.target.partition(":")
        agent = target if kind == "agent" else None
        relay = self.targets.relay_of(target) if kind == "dest" else None
        spec = JobSpec(
            attempt_id=attempt.attempt_id,
            job=spec_job.id,
            jobnet=run.jobnet.name,
            **self.flow.command(run, job, attempt),
            timeout_s=spec_job.timeout_s,
            output_limit_bytes=self._settings.output_limit_bytes,
            agent=agent,
            dest=spec_job.dest,
            relay=relay,
            restart=self.targets.lost_outcome(spec_job, attempt.target) == LostOutcome.RESTART,
            token=self._tokens.make(attempt.attempt_id, attempt.target, self._lease.epoch),
            user=spec_job.user,
        )
        subject = subjects.agent_run(agent) if agent is not None else subjects.relay_run(str(relay))
        env = Envelope(
            kind=Kind.DISPATCH,
            sid=self._settings.server_id,
            payload=spec.to_wire(),
            epoch=self._lease.epoch,
            run_id=run.run_id,
            job_run_id=job_run_id(run.run_id, job.id),
            attempt=attempt.n,
            tenant=run.tenant,
            ts=now,
        )
        return subject, env

    def _track(self, run: Run, job: JobRun, attempt: Attempt) -> None:
        """Watch a live attempt: for its events, its confirmation, its relay's queue and its agent's heartbeats."""
        aid = attempt.attempt_id
        self._attempts[aid] = (run, job)
        if attempt.accepted_at is None:
            self._unconfirmed[aid] = (run, job)
        elif attempt.target.startswith("dest:") and attempt.started_at is None and attempt.queued_at is None:
            self._held[aid] = (run, job)
        if attempt.target.startswith("agent:"):
            self._on_agents[aid] = (run, job)

    def _untrack(self, aid: str) -> None:
        for watched in (self._attempts, self._unconfirmed, self._held, self._on_agents):
            watched.pop(aid, None)

    def _confirm(self, attempt: Attempt, now: float) -> None:
        if attempt.accepted_at is None:
            attempt.accepted_at = now
        self._unconfirmed.pop(attempt.attempt_id, None)

    def _watchdog(self, ch: Changes, out: Outbound, now: float, mono: float) -> None:
        """Send unconfirmed and relay-held dispatches again; apply the restart table to silent agents' attempts."""
        s = self._settings
        if s.retention_days > 0 and now - self._last_purge > RETENTION_CHECK_S:
            self._last_purge = now
            ch.purge_before = now - s.retention_days * 86400
        for watched, after_s in ((self._unconfirmed, s.dispatch_timeout_s), (self._held, s.held_resend_s)):
            for aid, (run, job) in watched.items():
                attempt = job.attempt_of(aid)
                if attempt is not None and mono - attempt.seen_at > after_s:
                    attempt.seen_at = mono
                    out.dispatches.append(self._dispatch_envelope(run, job, attempt, now))
        silent = [
            (run, job, attempt)
            for aid, (run, job) in self._on_agents.items()
            if (attempt := job.attempt_of(aid)) is not None
            and attempt.accepted_at is not None
            and mono - attempt.seen_at > s.agent_lost_after_s
        ]
        for run, job, attempt in silent:
            self._lose(run, job, attempt, f"no heartbeat for {s.agent_lost_after_s:g}s", ch, out, now)
        self.flow.tick(ch, out, now)

    # -- commands ----------------------------------------------------------------------------------

    def _on_command(self, cmd: Command, ch: Changes, out: Outbound, now: float) -> dict[str, Any]:
        tenancy.check_command(cmd.verb, cmd.args, cmd.caller.get("tenant"), self.jobnets, self.targets, self.runs)
        if cmd.verb == "apply":
            return self._apply_definitions(cmd.args.get("definitions"), ch, now)
        if cmd.verb == "run":
            return self._start_run(cmd.args, ch, out, now)
        if cmd.verb == "schedule":
            return self.schedules.command(cmd.args, ch.schedules)
        if cmd.verb == "maintenance":
            return self._set_maintenance(cmd.args.get("on"), ch)
        if cmd.verb == "agent":
            return self._agent_command(cmd.args, ch, out, now)
        if cmd.verb in RUN_COMMANDS:
            return self._run_command(cmd, ch, out, now)
        if cmd.verb == "purge":
            older_than_s = cmd.args.get("older_than_s")
            if isinstance(older_than_s, bool) or not isinstance(older_than_s, int | float) or older_than_s < 0:
                raise WireError(ErrorCode.INVALID, "purge needs older_than_s, a number of seconds >= 0")
            ch.purge_before = now - older_than_s
            return {"purged_before": ch.purge_before}
        raise WireError(ErrorCode.INVALID, f"unknown command {cmd.verb!r}")

    def _apply_definitions(self, raw: Any, ch: Changes, now: float) -> dict[str, Any]:
        try:
            # References may name what is already registered: checked against it just below.
            defs = parse_definitions(raw, complete=False)
        except DefinitionError as exc:
            raise WireError(ErrorCode.INVALID, "definitions refused:\n" + str(exc)) from exc
        self._check_targets(defs)
        known = {**{n: net for n, (_, net, _) in self.jobnets.items()}, **defs.jobnets}
        calendars = {*self.schedules.calendars, *defs.calendars}
        if crossed := cross_errors(defs.jobnets, known, calendars):
            raise WireError(ErrorCode.INVALID, "definitions refused:\n" + "\n".join(map(str, crossed)))
        if unknown := self.schedules.check(defs, {*self.jobnets, *defs.jobnets}):
            raise WireError(ErrorCode.INVALID, "definitions refused:\n" + "\n".join(unknown))
        result: list[dict[str, Any]] = []
        for name, net in sorted(defs.jobnets.items()):
            body = orjson.dumps(net.to_dict(), option=orjson.OPT_SORT_KEYS).decode()
            digest = hashlib.sha256(body.encode()).hexdigest()
            current = self.jobnets.get(name)
            if current is not None and current[2] == digest:
                result.append({"name": name, "version": current[0], "changed": False})
                continue
            version = current[0] + 1 if current else 1
            ch.jobnet_versions.append((name, version, body, digest, net.tenant, now))
            self.jobnets[name] = (version, net, digest)
            result.append({"name": name, "version": version, "changed": True})
        for name, dest in sorted(defs.destinations.items()):
            ch.destinations.append((name, orjson.dumps(dest.to_dict()).decode(), now))
        for name, agent in sorted(defs.agents.items()):
            ch.agent_definitions.append(("agent", name, orjson.dumps(agent.to_dict()).decode(), now))
        for name, group in sorted(defs.groups.items()):
            ch.agent_definitions.append(("group", name, orjson.dumps(group.to_dict()).decode(), now))
        self.targets.define(defs)
        self.admission.define(defs)
        for name, lock in sorted(defs.locks.items()):
            ch.agent_definitions.append(("lock", name, orjson.dumps(lock.to_dict()).decode(), now))
        return {
            "jobnets": result,
            "destinations": sorted(defs.destinations),
            "agents": sorted(defs.agents),
            "groups": sorted(defs.groups),
            **self.schedules.apply(defs, ch.schedules, now),
        }

    def _check_targets(self, defs: Definitions) -> None:
        errors = self.targets.tenant_errors(defs)
        known = {**self.admission.locks, **defs.locks}
        for net in defs.jobnets.values():
            uses = [(f"jobnet.{net.name}.locks", u) for u in net.locks]
            uses += [(f"jobnet.{net.name}.job[{i}].locks", u) for i, j in enumerate(net.jobs) for u in j.locks]
            errors += [f"{path}: no lock named {u.name!r} is defined" for path, u in uses if u.name not in known]
        if errors:
            raise WireError(ErrorCode.INVALID, "definitions refused:\n" + "\n".join(errors))

    def _run_command(self, cmd: Command, ch: Changes, out: Outbound, now: float) -> dict[str, Any]:
        run_id, job = cmd.args.get("run"), cmd.args.get("job")
        run = self.runs.get(run_id) if isinstance(run_id, str) else None
        if run is None:
            raise WireError(ErrorCode.NOT_FOUND, f"no run {run_id!r}")
        if cmd.verb == "hold":
            return control.hold(self, run, job, ch, out)
        if cmd.verb == "release":
            return control.release(self, run, job, ch, out)
        if cmd.verb == "skip":
            return control.skip(self, run, job, ch, out, now)
        if cmd.verb == "kill":
            return control.kill(self, run, job, ch, out, now)
        if cmd.verb == "rerun":
            return control.rerun(self, run, cmd.args, ch, out)
        return control.set_status(self, run, job, cmd.args.get("state"), ch, out, now)

    def _agent_command(self, args: dict[str, Any], ch: Changes, out: Outbound, now: float) -> dict[str, Any]:
        """hold, release, block, cleanup or unregister a standard agent."""
        name, action = args.get("name"), args.get("action")
        if not isinstance(name, str) or not is_valid_name(name):
            raise WireError(ErrorCode.INVALID, f"invalid agent name {name!r}")
        states = {"hold": AgentState.HELD, "release": AgentState.EFFECTIVE, "block": AgentState.BLOCKED}
        states["cleanup"] = AgentState.BLOCKED
        if action == "unregister":
            ch.agent_deletes.append(name)
            self.targets.status.pop(name, None)
            return {"agent": name, "state": "unregistered"}
        if action not in states:
            raise WireError(ErrorCode.INVALID, f"unknown agent action {action!r}: use {', '.join(states)}, unregister")
        status = self.targets.agent(name)
        status.state = states[action]
        ch.agent_states[name] = (name, now, str(status.state), status.used_at)
        lost = 0
        if status.state == AgentState.BLOCKED:
            # A target that died: what it was running is lost, and the restart table decides what follows.
            for aid, (run, job) in list(self._on_agents.items()):
                attempt = job.attempt_of(aid)
                if attempt is not None and attempt.target == f"agent:{name}":
                    self._lose(run, job, attempt, f"agent {name} was {action}ed", ch, out, now)
                    lost += 1
        return {"agent": name, "state": str(status.state), "attempts_lost": lost}

    def _set_maintenance(self, on: Any, ch: Changes) -> dict[str, Any]:
        if not isinstance(on, bool):
            raise WireError(ErrorCode.INVALID, "maintenance needs 'on': true or false")
        if on != self.maintenance:
            ch.settings[MAINTENANCE_KEY] = "on" if on else "off"
            logger.warning("maintenance mode %s", "on: nothing new starts" if on else "off")
        self.maintenance = on
        held = sum(1 for _, job in self._ready if job.state == JobState.READY) if on else 0
        return {"maintenance": on, "jobs_held": held}

    def _start_run(self, args: dict[str, Any], ch: Changes, out: Outbound, now: float) -> dict[str, Any]:
        if self.maintenance:
            raise WireError(
                ErrorCode.CONFLICT,
                "the site is in maintenance mode: no run starts until 'ekiden site maintenance off'",
            )
        name = args.get("jobnet")
        params = args.get("params") or {}
        if not isinstance(name, str) or name not in self.jobnets:
            raise WireError(ErrorCode.NOT_FOUND, f"no jobnet named {name!r} is applied")
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise WireError(ErrorCode.INVALID, "params must map names to strings")
        fire = args.get("fire")
        if fire is not None and (fired := self.schedules.check_fire(fire)) is not None:
            return {"run": fired, "jobnet": name, "deduplicated": True}
        key = args.get("dedupe")
        if key is not None and not isinstance(key, str):
            raise WireError(ErrorCode.INVALID, "dedupe must be a string")
        if key is not None and key in self._dedupe:
            earlier = self._dedupe[key]
            return {"run": earlier, "jobnet": name, "deduplicated": True}
        version, jobnet, _ = self.jobnets[name]
        queued = self.flow.admit(jobnet, args, ch)
        run = self.open_run(name, params, ch, out, now)
        run.held, run.dedupe_key = bool(args.get("hold")), key
        if key is not None:
            self._dedupe[key] = run.run_id
        if fire is not None:
            self.schedules.record_fire(fire, run.run_id, ch.schedules, now)
        self.flow.started(run, queued, ch, now)
        logger.info("run %s of %s v%d started%s", run.run_id, name, version, " held" if run.held else "")
        return {"run": run.run_id, "jobnet": name, "version": version, "held": run.held}

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
                self._ready.append((run, job))
        return run


def _summary(definitions: Any) -> dict[str, list[str]]:
    """What a definitions map names, for the audit log (not its whole body)."""
    if not isinstance(definitions, dict):
        return {}
    return {k: sorted(map(str, v)) for k, v in definitions.items() if isinstance(v, dict)}


def _attempt_from_row(row: tuple[Any, ...]) -> Attempt:
    """An attempt from ``(attempt_id, n, target, dispatched, accepted, started, host, pid, status, queued)``."""
    aid, n, target, dispatched_at, accepted_at, started_at, host, pid, status, queued_at = row
    attempt = Attempt(aid, n, target, dispatched_at, accepted_at, started_at, host=host, pid=pid)
    attempt.status, attempt.queued_at = status, queued_at
    return attempt


def _take_inventory(status: AgentStatus, inventory: dict[str, Any]) -> None:
    slots, running = inventory.get("slots"), inventory.get("running")
    if isinstance(slots, int) and slots >= 0:
        status.slots = slots
    if isinstance(running, int) and running >= 0:
        status.running = running


def _jobnet_from_body(name: str, body: str) -> Jobnet:
    return parse_definitions({"jobnet": {name: orjson.loads(body)}}).jobnets[name]
