"""Which ready job goes where, now; and the watch over dispatched attempts until they end.

At the end of each turn the core offers its ready jobs here. A job that may start gets its attempt (one per
agent for a broadcast), its locks and the envelope sent after commit (``engine.dispatcher`` sends it); one
that may not (no agent takes it, a lock is taken, a limit is reached) waits, saying why, and is offered
again. Every live attempt is tracked here until it ends: for its events, for its confirmation (a dispatch
nobody confirmed is sent again under the same attempt ID), for the relay that holds it outside JetStream,
and for the heartbeats of the agent it runs on.
"""

from typing import TYPE_CHECKING

from engine.changes import Changes
from engine.runs import Attempt, JobRun, Run
from engine.settings import ManagerSettings
from engine.states import JobState, RunState
from engine.targets import LostOutcome
from engine.tokens import AttemptTokens
from schemas import subjects
from schemas.messages import Envelope, JobSpec, Kind, attempt_id, job_run_id

if TYPE_CHECKING:
    from engine.core import Core, Outbound


class Dispatch:
    """The ready jobs of one core, and its attempts in flight."""

    def __init__(self, core: "Core", settings: ManagerSettings) -> None:
        self._core = core
        self._settings = settings
        #: jobs to offer at the end of the turn
        self.ready: list[tuple[Run, JobRun]] = []
        #: every live attempt, for its events
        self.attempts: dict[str, tuple[Run, JobRun]] = {}
        #: dispatched attempts that no relay or agent has confirmed yet: the watchdog sends them again
        self.unconfirmed: dict[str, tuple[Run, JobRun]] = {}
        #: attempts a relay holds but has not put in JetStream (its downstream is away, or it died)
        self.held: dict[str, tuple[Run, JobRun]] = {}
        #: attempts on standard agents, watched for heartbeats
        self.on_agents: dict[str, tuple[Run, JobRun]] = {}
        #: the token each dispatch carries, which its attempt's events must carry back
        self.tokens = AttemptTokens.for_site(settings.site_dir)

    def offer(self, ch: Changes, out: "Outbound", now: float, mono: float) -> None:
        """Dispatch the ready jobs that may start now; the others wait, saying why."""
        core = self._core
        if core.maintenance or not self.ready:
            return
        ready, self.ready = self.ready, []
        for run, job in ready:
            if job.state != JobState.READY or run.state != RunState.RUNNING or run.held:
                continue  # a held run's ready jobs are offered again when it is released
            if core.flow.take(run, job, ch, out, now):
                continue  # a flow unit the manager runs itself, or a job that cannot start
            agents = self._agents_for(job)
            targets = [f"agent:{a}" for a in agents] if not isinstance(agents, str) and agents else []
            if not isinstance(agents, str) and not agents:
                targets = [f"dest:{job.job.dest}"]
            wait = agents if isinstance(agents, str) else core.admission.refusal(run, job, targets)
            if wait:  # no agent takes it now, a lock is taken or a limit reached: it waits, saying why
                if job.reason != wait:
                    job.reason = wait
                    core.changed(run, job, ch, out)
                self.ready.append((run, job))
                continue
            assert not isinstance(agents, str)
            ch.lock_takes += core.admission.admit(run, job, targets, now)
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
                self.track(run, job, attempt)
                out.dispatches.append(self._envelope(run, job, attempt, now))
            for name in agents:
                status = core.targets.agent(name)
                status.used_at = now
                status.running += 1  # until its next heartbeat says how busy it is
                ch.agent_states[name] = (name, now, str(status.state), now)
            core.changed(run, job, ch, out)

    def _agents_for(self, job: JobRun) -> list[str] | str:
        """The agents a job goes to now ([] for a destination), or why it must wait."""
        targets = self._core.targets
        spec = job.job
        if spec.agent is not None:
            refusal = targets.refusal(spec.agent)
            return refusal or [spec.agent]
        if spec.group is None:
            return []
        if spec.broadcast:
            members = targets.members(spec.group)
        else:
            picked = targets.pick(spec.group)
            members = [picked] if picked is not None else []
        return members or f"no agent of group {spec.group} takes jobs now"

    def _envelope(self, run: Run, job: JobRun, attempt: Attempt, now: float) -> tuple[str, Envelope]:
        core = self._core
        spec_job = job.job
        kind, _, target = attempt.target.partition(":")
        agent = target if kind == "agent" else None
        relay = core.targets.relay_of(target) if kind == "dest" else None
        spec = JobSpec(
            attempt_id=attempt.attempt_id,
            job=spec_job.id,
            jobnet=run.jobnet.name,
            **core.flow.command(run, job, attempt),
            timeout_s=spec_job.timeout_s,
            output_limit_bytes=self._settings.output_limit_bytes,
            agent=agent,
            dest=spec_job.dest,
            relay=relay,
            restart=core.targets.lost_outcome(spec_job, attempt.target) == LostOutcome.RESTART,
            token=self.tokens.make(attempt.attempt_id, attempt.target, core.epoch),
            user=spec_job.user,
        )
        subject = subjects.agent_run(agent) if agent is not None else subjects.relay_run(str(relay))
        env = Envelope(
            kind=Kind.DISPATCH,
            sid=self._settings.server_id,
            payload=spec.to_wire(),
            epoch=core.epoch,
            run_id=run.run_id,
            job_run_id=job_run_id(run.run_id, job.id),
            attempt=attempt.n,
            tenant=run.tenant,
            ts=now,
        )
        return subject, env

    # -- attempts in flight --------------------------------------------------------------------------

    def track(self, run: Run, job: JobRun, attempt: Attempt) -> None:
        """Watch a live attempt: for its events, its confirmation, its relay's queue and its agent's heartbeats."""
        aid = attempt.attempt_id
        self.attempts[aid] = (run, job)
        if attempt.accepted_at is None:
            self.unconfirmed[aid] = (run, job)
        elif attempt.target.startswith("dest:") and attempt.started_at is None and attempt.queued_at is None:
            self.held[aid] = (run, job)
        if attempt.target.startswith("agent:"):
            self.on_agents[aid] = (run, job)

    def untrack(self, aid: str) -> None:
        """Stop watching an attempt that ended."""
        for watched in (self.attempts, self.unconfirmed, self.held, self.on_agents):
            watched.pop(aid, None)

    def confirm(self, attempt: Attempt, now: float) -> None:
        """A relay, an agent or the attempt's own events confirmed that its dispatch arrived."""
        if attempt.accepted_at is None:
            attempt.accepted_at = now
        self.unconfirmed.pop(attempt.attempt_id, None)

    def resend(self, out: "Outbound", now: float, mono: float) -> None:
        """Send again the dispatches nobody confirmed, and those a relay still holds outside JetStream."""
        s = self._settings
        for watched, after_s in ((self.unconfirmed, s.dispatch_timeout_s), (self.held, s.held_resend_s)):
            for aid, (run, job) in watched.items():
                attempt = job.attempt_of(aid)
                if attempt is not None and mono - attempt.seen_at > after_s:
                    attempt.seen_at = mono
                    out.dispatches.append(self._envelope(run, job, attempt, now))

    def silent(self, mono: float) -> list[tuple[Run, JobRun, Attempt]]:
        """Attempts on agents that were confirmed but have sent no heartbeat for too long."""
        lost_after_s = self._settings.agent_lost_after_s
        return [
            (run, job, attempt)
            for aid, (run, job) in self.on_agents.items()
            if (attempt := job.attempt_of(aid)) is not None
            and attempt.accepted_at is not None
            and mono - attempt.seen_at > lost_after_s
        ]
