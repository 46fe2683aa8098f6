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

from engine.runs import Attempt, JobRun, Run
from engine.settings import ManagerSettings
from engine.states import ACTIVE_JOB_STATES, STATE_OF_STATUS, JobState, RunState
from engine.store import Changes, Lease, Store
from schemas import subjects
from schemas.definitions import (
    DEFAULT_RELAY,
    DefinitionError,
    Definitions,
    Destination,
    Jobnet,
    parse_definitions,
)
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Finished, JobSpec, Kind, attempt_id, job_run_id

logger = logging.getLogger(__name__)

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


class Sender(Protocol):
    """Where the core hands what it sends after commit (the service wires it to NATS)."""

    async def ack(self, reply: str, eids: list[str]) -> None:
        """Ack committed events to whoever sent them."""

    def dispatch(self, dispatches: list[tuple[str, Envelope]]) -> None:
        """Send committed dispatches (``(subject, envelope)`` pairs) without blocking the core."""

    async def progress(self, run: Run, jobs: list[JobRun]) -> None:
        """Publish a run's committed changes for anyone watching it."""


class Core:
    """Owns the runs of one active manager."""

    def __init__(
        self, store: Store, settings: ManagerSettings, lease: Lease, sender: Sender, queue: "asyncio.Queue[Item]"
    ) -> None:
        self._store = store
        self._settings = settings
        self._lease = lease
        self._sender = sender
        self.queue = queue
        self.runs: dict[str, Run] = {}
        self._attempts: dict[str, tuple[Run, JobRun]] = {}
        #: dispatched attempts that no relay or agent has confirmed yet: the watchdog sends them again
        self._unconfirmed: dict[str, tuple[Run, JobRun]] = {}
        self._ready: list[tuple[Run, JobRun]] = []
        self.jobnets: dict[str, tuple[int, Jobnet, str]] = {}
        self.destinations: dict[str, Destination] = {}
        self._last_run_id = 0
        self._last_renewal = time.time()
        self.maintenance = False

    @property
    def epoch(self) -> int:
        """The lease epoch this core acts under."""
        return self._lease.epoch

    # -- start-up --------------------------------------------------------------------------------

    async def recover(self) -> None:
        """Load definitions and every unfinished run from the site database."""
        nets, dests = await self._store.latest_definitions()
        for name, (version, body, digest) in nets.items():
            self.jobnets[name] = (version, _jobnet_from_body(name, body), digest)
        for name, body in dests.items():
            self.destinations[name] = _destination_from_body(name, body)
        self._last_run_id = await self._store.last_run_id()
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
        run.tenant = raw["tenant"]
        for job_id, row in raw["jobs"].items():
            job = run.jobs.get(job_id)
            if job is None:
                continue
            state, attempts, exit_code, started_at, ended_at, reason = row[:6]
            aid, n, target, dispatched_at, accepted_at, a_started, host, pid = row[6:]
            job.state, job.attempts, job.exit_code = JobState(state), attempts, exit_code
            job.started_at, job.ended_at, job.reason = started_at, ended_at, reason
            if aid is not None:
                job.current = Attempt(aid, n, target, dispatched_at, accepted_at, a_started, host=host, pid=pid)
                job.current.seen_at = mono
                if job.state in ACTIVE_JOB_STATES:
                    self._attempts[aid] = (run, job)
        run.recount()
        for job in run.jobs.values():
            job.pending = sum(1 for d in job.job.after if run.jobs[d].state != JobState.SUCCEEDED)
            if job.state == JobState.READY:
                self._ready.append((run, job))
        # Anything dispatched but never confirmed is sent again at once under the same attempt ID.
        for job in run.jobs.values():
            if job.state == JobState.DISPATCHED and job.current is not None and job.current.accepted_at is None:
                job.current.seen_at = 0.0
                self._unconfirmed[job.current.attempt_id] = (run, job)
        return run

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
        now, mono = time.time(), time.monotonic()
        for item in items:
            self._apply(item, changes, out, now, mono)
        self._dispatch_ready(changes, out, now, mono)
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
            self._watchdog(out, mono)
        else:
            try:
                out.results.append((item.done, self._on_command(item, ch, out, now)))
            except WireError as exc:
                out.results.append((item.done, exc))

    async def _send(self, out: Outbound) -> None:
        for reply, eids in out.acks:
            await self._sender.ack(reply, eids)
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

    def _changed(self, run: Run, job: JobRun, ch: Changes, out: Outbound) -> None:
        ch.job(run, job)
        out.progress[run.run_id] = run
        out.changed_jobs.setdefault(run.run_id, {})[job.id] = job

    # -- events ----------------------------------------------------------------------------------

    def _on_event(self, env: Envelope, ch: Changes, out: Outbound, now: float, mono: float) -> str | None:
        """Apply one event; return its ID if it may be acked (it is committed or changes nothing)."""
        eid, aid = env.payload.get("eid"), env.payload.get("attempt_id")
        if not isinstance(eid, str) or not isinstance(aid, str):
            logger.warning("event %s without eid or attempt_id dropped", env.kind)
            return None
        found = self._attempts.get(aid)
        if found is None:
            logger.debug("event %s for attempt %s that is not in flight: acked, changes nothing", env.kind, aid)
            return eid
        run, job = found
        attempt = job.current
        if attempt is None or attempt.attempt_id != aid:
            logger.info("stale event %s for attempt %s discarded", env.kind, aid)
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
            self._on_refused(
                run, job, str(env.payload.get("code", "")), str(env.payload.get("reason", "")), ch, out, now
            )
        return eid

    def _on_started(
        self, run: Run, job: JobRun, attempt: Attempt, env: Envelope, ch: Changes, out: Outbound, now: float
    ) -> None:
        host, pid = env.payload.get("host"), env.payload.get("pid")
        attempt.host = host if isinstance(host, str) else ""
        attempt.pid = pid if isinstance(pid, int) else None
        self._confirm(attempt, now)
        if job.state == JobState.DISPATCHED:
            job.state = JobState.RUNNING
            job.started_at = attempt.started_at = env.ts or now
            job.reason = ""
            self._changed(run, job, ch, out)
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
        self._end_job(run, job, state, fin.exit_code, fin.reason, ch, out, now)

    def _end_job(
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
        run.set_state(job, state)
        job.exit_code = exit_code
        job.ended_at = now
        job.reason = reason
        if job.current is not None:
            self._attempts.pop(job.current.attempt_id, None)
            self._unconfirmed.pop(job.current.attempt_id, None)
        self._changed(run, job, ch, out)
        if state == JobState.SUCCEEDED:
            for ready in run.release_dependants(job.id):
                self._ready.append((run, ready))
                self._changed(run, ready, ch, out)
        else:
            for skipped in run.skip_downstream(job.id):
                skipped.ended_at = now
                self._changed(run, skipped, ch, out)
        self._maybe_end_run(run, ch, out, now)

    def _maybe_end_run(self, run: Run, ch: Changes, out: Outbound, now: float) -> None:
        if run.state != RunState.RUNNING or not run.is_settled():
            return
        run.state = run.final_state()
        run.ended_at = now
        ch.run(run)
        out.progress[run.run_id] = run
        out.changed_jobs.setdefault(run.run_id, {})
        out.ended_runs.append(run)
        logger.info("run %s (%s) %s", run.run_id, run.jobnet.name, run.state)

    def _on_refused(
        self, run: Run, job: JobRun, code: str, reason: str, ch: Changes, out: Outbound, now: float
    ) -> None:
        if job.state != JobState.DISPATCHED:
            return
        if code == ErrorCode.UNAVAILABLE:
            # Back-pressure (a relay's backlog is full): keep the attempt and offer it again later.
            job.reason = reason or "target busy"
            ch.job(run, job)
            return
        if job.current is not None:
            job.current.status, job.current.reason, job.current.finished_at = "error", reason, now
        self._end_job(run, job, JobState.FAILED, None, f"refused: {reason}", ch, out, now)

    def _on_dispatch_reply(self, item: DispatchReply, ch: Changes, out: Outbound, now: float, mono: float) -> None:
        for aid in item.accepted:
            found = self._attempts.get(aid)
            if found is None:
                continue
            run, job = found
            if job.current is not None and job.current.accepted_at is None:
                # Kept in memory and written with the job's next change: a confirmation lost in a
                # failover only costs a harmless resend under the same attempt ID.
                self._confirm(job.current, now)
                job.current.seen_at = mono
                if job.reason:
                    job.reason = ""
                    ch.job(run, job)
        for aid, code, reason in item.refused:
            found = self._attempts.get(aid)
            if found is not None:
                self._on_refused(found[0], found[1], code, reason, ch, out, now)

    def _on_registered(self, env: Envelope, ch: Changes, now: float) -> None:
        name, kind = env.payload.get("name"), env.payload.get("kind", "agent")
        if not isinstance(name, str) or not isinstance(kind, str):
            logger.warning("registration without a name dropped")
            return
        inventory = orjson.dumps(env.payload, default=str).decode()
        ch.agents.append((name, kind, inventory, now, now, "effective"))

    # -- dispatch ----------------------------------------------------------------------------------

    def _dispatch_ready(self, ch: Changes, out: Outbound, now: float, mono: float) -> None:
        if self.maintenance or not self._ready:
            return
        ready, self._ready = self._ready, []
        for run, job in ready:
            if job.state != JobState.READY or run.state != RunState.RUNNING:
                continue
            job.attempts += 1
            aid = attempt_id(self._settings.server_id, run.run_id, job.id, job.attempts)
            target = f"agent:{job.job.agent}" if job.job.agent else f"dest:{job.job.dest}"
            job.current = Attempt(aid, job.attempts, target, now, seen_at=mono)
            job.state = JobState.DISPATCHED
            job.started_at = job.ended_at = job.exit_code = None
            self._attempts[aid] = (run, job)
            self._unconfirmed[aid] = (run, job)
            self._changed(run, job, ch, out)
            out.dispatches.append(self._dispatch_envelope(run, job, now))

    def _dispatch_envelope(self, run: Run, job: JobRun, now: float) -> tuple[str, Envelope]:
        spec_job = job.job
        assert job.current is not None
        relay = None
        if spec_job.dest is not None:
            dest = self.destinations.get(spec_job.dest)
            relay = dest.relay if dest is not None else DEFAULT_RELAY
        spec = JobSpec(
            attempt_id=job.current.attempt_id,
            job=spec_job.id,
            jobnet=run.jobnet.name,
            argv=spec_job.argv,
            shell=spec_job.shell,
            call=spec_job.call,
            args=spec_job.args,
            env=spec_job.env,
            cwd=spec_job.cwd,
            timeout_s=spec_job.timeout_s,
            output_limit_bytes=self._settings.output_limit_bytes,
            agent=spec_job.agent,
            dest=spec_job.dest,
            relay=relay,
            restart=spec_job.restart,
        )
        subject = subjects.agent_run(spec_job.agent) if spec_job.agent else subjects.relay_run(relay or DEFAULT_RELAY)
        env = Envelope(
            kind=Kind.DISPATCH,
            sid=self._settings.server_id,
            payload=spec.to_wire(),
            epoch=self._lease.epoch,
            run_id=run.run_id,
            job_run_id=job_run_id(run.run_id, job.id),
            attempt=job.current.n,
            tenant=run.tenant,
            ts=now,
        )
        return subject, env

    def _confirm(self, attempt: Attempt, now: float) -> None:
        if attempt.accepted_at is None:
            attempt.accepted_at = now
        self._unconfirmed.pop(attempt.attempt_id, None)

    def _watchdog(self, out: Outbound, mono: float) -> None:
        timeout_s = self._settings.dispatch_timeout_s
        for run, job in self._unconfirmed.values():
            attempt = job.current
            if attempt is not None and mono - attempt.seen_at > timeout_s:
                attempt.seen_at = mono
                out.dispatches.append(self._dispatch_envelope(run, job, time.time()))

    # -- commands ----------------------------------------------------------------------------------

    def _on_command(self, cmd: Command, ch: Changes, out: Outbound, now: float) -> dict[str, Any]:
        if cmd.verb == "apply":
            return self._apply_definitions(cmd.args.get("definitions"), ch, now)
        if cmd.verb == "run":
            return self._start_run(cmd.args, ch, out, now)
        if cmd.verb == "maintenance":
            self.maintenance = bool(cmd.args.get("on"))
            return {"maintenance": self.maintenance}
        raise WireError(ErrorCode.INVALID, f"unknown command {cmd.verb!r}")

    def _apply_definitions(self, raw: Any, ch: Changes, now: float) -> dict[str, Any]:
        try:
            defs = parse_definitions(raw)
        except DefinitionError as exc:
            raise WireError(ErrorCode.INVALID, "definitions refused:\n" + str(exc)) from exc
        self._check_targets(defs)
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
            self.destinations[name] = dest
        return {"jobnets": result, "destinations": sorted(defs.destinations)}

    def _check_targets(self, defs: Definitions) -> None:
        known = {**self.destinations, **defs.destinations}
        errors = []
        for net in defs.jobnets.values():
            for i, job in enumerate(net.jobs):
                if job.dest is not None and job.dest in known and known[job.dest].tenant != net.tenant:
                    errors.append(
                        f"jobnet.{net.name}.job[{i}].dest: destination {job.dest!r} belongs to tenant "
                        f"{known[job.dest].tenant!r}, not {net.tenant!r}"
                    )
        if errors:
            raise WireError(ErrorCode.INVALID, "definitions refused:\n" + "\n".join(errors))

    def _start_run(self, args: dict[str, Any], ch: Changes, out: Outbound, now: float) -> dict[str, Any]:
        name = args.get("jobnet")
        params = args.get("params") or {}
        if not isinstance(name, str) or name not in self.jobnets:
            raise WireError(ErrorCode.NOT_FOUND, f"no jobnet named {name!r} is applied")
        if not isinstance(params, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in params.items()
        ):
            raise WireError(ErrorCode.INVALID, "params must map names to strings")
        version, jobnet, _ = self.jobnets[name]
        self._last_run_id += 1
        run = Run.new(str(self._last_run_id), jobnet, version, now, params)
        self.runs[run.run_id] = run
        ch.run(run)
        for job in run.jobs.values():
            self._changed(run, job, ch, out)
            if job.state == JobState.READY:
                self._ready.append((run, job))
        logger.info("run %s of %s v%d started", run.run_id, name, version)
        return {"run": run.run_id, "jobnet": name, "version": version}


def _jobnet_from_body(name: str, body: str) -> Jobnet:
    return parse_definitions({"jobnet": {name: orjson.loads(body)}}).jobnets[name]


def _destination_from_body(name: str, body: str) -> Destination:
    return parse_definitions({"destination": {name: orjson.loads(body)}}).destinations[name]
