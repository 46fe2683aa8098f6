"""What executors, relays and agents report, applied to the core's runs inside its turn.

An attempt's events (accepted, started, finished, refused), a relay's or agent's answer to a dispatch batch
(or nobody's), an agent's registration or heartbeat, and the loss of an attempt's executor (a ``lost``
report, an agent silent too long, an agent an operator blocked). An event is acked only once what it
changed is committed; one that changes nothing (stale, unknown, not carrying its dispatch's token) is acked
all the same, so that no outbox on the way keeps it for ever.
"""

import logging
from typing import TYPE_CHECKING, Any

import orjson

from engine import control
from engine.changes import Changes
from engine.runs import Attempt, JobRun, Run
from engine.states import STATE_OF_STATUS, JobState
from engine.targets import AgentState, AgentStatus, LostOutcome
from schemas.errors import ErrorCode
from schemas.messages import Envelope, Finished, JobStatus, Kind

if TYPE_CHECKING:
    from engine.core import Core, DispatchReply, DispatchUnreachable, EventsIn, Outbound

logger = logging.getLogger(__name__)


def on_batch(core: "Core", item: "EventsIn", ch: Changes, out: "Outbound", now: float, mono: float) -> None:
    """Apply a batch of events; the ack of those that may be acked is sent after commit."""
    eids = [eid for env in item.envelopes if (eid := on_event(core, env, ch, out, now, mono))]
    if item.reply:
        out.acks.append((item.reply, eids))


def on_event(core: "Core", env: Envelope, ch: Changes, out: "Outbound", now: float, mono: float) -> str | None:
    """Apply one event; return its ID if it may be acked (it is committed or changes nothing)."""
    eid, aid = env.payload.get("eid"), env.payload.get("attempt_id")
    if not isinstance(eid, str) or not isinstance(aid, str):
        logger.warning("event %s without eid or attempt_id dropped", env.kind)
        return None
    found = core.dispatch.attempts.get(aid)
    if found is None:
        target = core.killed.get(aid)
        if env.kind == Kind.STARTED and target is not None:
            # Killed while it waited in its destination's queue, and a worker took it anyway.
            out.controls.append(control.kill_request(core, env.run_id, target, aid, now))
        elif env.kind == Kind.FINISHED:
            core.killed.pop(aid, None)
        logger.debug("event %s for attempt %s that is not in flight: acked, changes nothing", env.kind, aid)
        return eid
    run, job = found
    attempt = job.attempt_of(aid)
    if attempt is None or attempt.status:
        logger.info("stale event %s for attempt %s discarded", env.kind, aid)
        return eid
    if not core.dispatch.tokens.check(env.payload.get("token"), aid, attempt.target, env.epoch):
        # Acked all the same, so that no outbox on the way keeps it for ever; it changes nothing.
        logger.warning("event %s for attempt %s refused: not the token it was dispatched with", env.kind, aid)
        return eid
    attempt.seen_at = mono
    if aid in core.killed and env.kind in (Kind.STARTED, Kind.HEARTBEAT):
        # Still running after a kill request: it may have been lost (a NATS or relay restart, a manager
        # swap), so ask again on every sign of life until the attempt reports its end.
        out.controls.append(control.kill_request(core, env.run_id, attempt.target, aid, now))
    if env.kind == Kind.STARTED:
        _on_started(core, run, job, attempt, env, ch, out, now)
    elif env.kind == Kind.FINISHED:
        try:
            fin = Finished.from_wire(env.payload)
        except ValueError as exc:
            logger.warning("malformed finished event for %s refused: %s", aid, exc)
            return None
        attempt.reported_at = env.ts or now
        core.killed.pop(aid, None)
        _on_finished(core, run, job, attempt, fin, ch, out, now)
    elif env.kind == Kind.ACCEPTED and attempt.accepted_at is None:
        core.dispatch.confirm(attempt, now)
        ch.job(run, job)
    elif env.kind == Kind.REFUSED:
        code, reason = str(env.payload.get("code", "")), str(env.payload.get("reason", ""))
        _on_refused(core, run, job, attempt, code, reason, ch, out, now)
    return eid


def _on_started(
    core: "Core", run: Run, job: JobRun, attempt: Attempt, env: Envelope, ch: Changes, out: "Outbound", now: float
) -> None:
    host, pid = env.payload.get("host"), env.payload.get("pid")
    attempt.host = host if isinstance(host, str) else ""
    attempt.pid = pid if isinstance(pid, int) else None
    core.dispatch.confirm(attempt, now)
    core.dispatch.held.pop(attempt.attempt_id, None)
    if job.state == JobState.DISPATCHED:
        job.state = JobState.RUNNING
        job.started_at = attempt.started_at = env.ts or now
        job.reason = ""
        core.changed(run, job, ch, out)
    else:
        ch.job(run, job)  # a redelivered attempt started again elsewhere: record where


def _on_finished(
    core: "Core", run: Run, job: JobRun, attempt: Attempt, fin: Finished, ch: Changes, out: "Outbound", now: float
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
        lose(core, run, job, attempt, fin.reason or "its executor was lost", ch, out, now)
    elif job.members:
        _end_member(core, run, job, attempt, ch, out, now)
    else:
        core.flow.attempt_ended(run, job, attempt, fin, state, ch, out, now)


def _end_member(
    core: "Core", run: Run, job: JobRun, attempt: Attempt, ch: Changes, out: "Outbound", now: float
) -> None:
    """A broadcast member ended; the job ends when every member did, succeeding only if all did."""
    core.dispatch.untrack(attempt.attempt_id)
    if any(not m.status for m in job.members.values()):
        core.changed(run, job, ch, out)
        return
    failed = sorted(name for name, m in job.members.items() if m.status != JobStatus.SUCCEEDED)
    if not failed:
        core.end_job(run, job, JobState.SUCCEEDED, 0, "", ch, out, now)
        return
    codes = [m.exit_code for m in job.members.values() if m.exit_code not in (0, None)]
    reason = "did not succeed on " + ", ".join(f"{n} ({job.members[n].status})" for n in failed)
    core.end_job(run, job, JobState.FAILED, codes[0] if codes else None, reason, ch, out, now)


def lose(
    core: "Core", run: Run, job: JobRun, attempt: Attempt, why: str, ch: Changes, out: "Outbound", now: float
) -> None:
    """An attempt's executor was lost: apply the restart table (the target's attribute, the job's setting)."""
    attempt.status, attempt.reason = str(JobStatus.LOST), why
    attempt.finished_at = attempt.finished_at or now
    if job.members:
        _end_member(core, run, job, attempt, ch, out, now)
        return
    core.dispatch.untrack(attempt.attempt_id)
    outcome = core.targets.lost_outcome(job.job, attempt.target)
    lost = f"attempt {attempt.n} on {attempt.host or attempt.target} lost ({why})"
    logger.warning("run %s job %s: %s: %s", run.run_id, job.id, lost, outcome)
    ch.lock_gives += core.admission.leave(run, job)
    if outcome == LostOutcome.RESTART:
        job.reason = f"{lost}; running again"
        run.set_state(job, JobState.READY)
        core.changed(run, job, ch, out)
        core.dispatch.ready.append((run, job))
    elif outcome == LostOutcome.HOLD:
        job.reason = f"{lost}; held for the operator"
        run.set_state(job, JobState.HELD)
        core.changed(run, job, ch, out)
    else:
        core.end_job(run, job, JobState.LOST, None, lost, ch, out, now)


def _on_refused(
    core: "Core",
    run: Run,
    job: JobRun,
    attempt: Attempt,
    code: str,
    reason: str,
    ch: Changes,
    out: "Outbound",
    now: float,
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
        _end_member(core, run, job, attempt, ch, out, now)
    else:
        core.end_job(run, job, JobState.FAILED, None, f"refused: {reason}", ch, out, now)


def on_dispatch_reply(
    core: "Core", item: "DispatchReply", ch: Changes, out: "Outbound", now: float, mono: float
) -> None:
    """A relay or agent answered a dispatch batch: confirm what it accepted, refuse what it refused."""
    inflight = core.dispatch
    queued = set(item.queued)
    for aid in item.accepted:
        found = inflight.attempts.get(aid)
        attempt = found[1].attempt_of(aid) if found is not None else None
        if found is None or attempt is None:
            continue
        run, job = found
        # Kept in memory and written with the job's next change: a confirmation lost in a failover
        # only costs a harmless resend under the same attempt ID.
        inflight.confirm(attempt, now)
        attempt.seen_at = mono
        if aid in queued:
            attempt.queued_at = attempt.queued_at or now
            inflight.held.pop(aid, None)
        elif attempt.target.startswith("dest:") and attempt.started_at is None and attempt.queued_at is None:
            inflight.held[aid] = found
        if job.reason:
            job.reason = ""
            ch.job(run, job)
    for aid, code, reason in item.refused:
        found = inflight.attempts.get(aid)
        attempt = found[1].attempt_of(aid) if found is not None else None
        if found is not None and attempt is not None:
            _on_refused(core, found[0], found[1], attempt, code, reason, ch, out, now)


def on_unreachable(core: "Core", item: "DispatchUnreachable", ch: Changes) -> None:
    """Nobody answered a dispatch batch: its jobs say why (the watchdog sends them again)."""
    for aid in item.attempt_ids:
        found = core.dispatch.attempts.get(aid)
        if found and found[1].state == JobState.DISPATCHED and found[1].reason != item.reason:
            found[1].reason = item.reason
            ch.job(*found)


def on_registered(core: "Core", env: Envelope, ch: Changes, now: float) -> None:
    """An agent announced itself or sent a heartbeat: record it and take its inventory."""
    name, kind = env.payload.get("name"), env.payload.get("kind", "agent")
    if not isinstance(name, str) or not isinstance(kind, str):
        logger.warning("registration without a name dropped")
        return
    inventory = orjson.dumps(env.payload, default=str).decode()
    ch.agents.append((name, kind, inventory, now, now, str(AgentState.EFFECTIVE)))
    take_inventory(core.targets.agent(name), env.payload)


def take_inventory(status: AgentStatus, inventory: dict[str, Any]) -> None:
    """What an agent's inventory says of its slots and how many of them run now."""
    slots, running = inventory.get("slots"), inventory.get("running")
    if isinstance(slots, int) and slots >= 0:
        status.slots = slots
    if isinstance(running, int) and running >= 0:
        status.running = running
