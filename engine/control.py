"""Operator commands on running work: hold, release, skip, kill, rerun and set-status.

These act on the core's in-memory runs exactly as the core's own event handling does, inside the same
turn, so their changes are committed before anything follows from them. Each refuses, with a reason,
what the job's or run's state does not allow.
"""

from typing import TYPE_CHECKING, Any

from engine.changes import Changes
from engine.paths import SKIPPED_BY_OPERATOR
from engine.runs import JobRun, Run
from engine.states import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JobState, RunState
from schemas import subjects
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, JobStatus, Kind

if TYPE_CHECKING:
    from engine.core import Core, Outbound

#: Job states an operator may set with set-status.
SETTABLE_STATES = {"succeeded": JobState.SUCCEEDED, "failed": JobState.FAILED, "skipped": JobState.SKIPPED}
#: Rerun modes.
RERUN_MODES = ("failed", "from", "only")
#: The reason a running job shows once an operator asked to kill it (until its executor reports the end).
KILL_REQUESTED = "kill requested"


def _refuse(reason: str) -> WireError:
    return WireError(ErrorCode.CONFLICT, reason)


def _job(run: Run, job_id: Any) -> JobRun:
    job = run.jobs.get(job_id) if isinstance(job_id, str) else None
    if job is None:
        raise WireError(ErrorCode.NOT_FOUND, f"run {run.run_id} has no job {job_id!r}")
    return job


def hold(core: "Core", run: Run, job_id: Any, ch: Changes, out: "Outbound") -> dict[str, Any]:
    """Hold a run (nothing new starts) or one job that has not started."""
    if run.state != RunState.RUNNING:
        raise _refuse(f"run {run.run_id} is {run.state}: only a running run can be held")
    if job_id is None:
        if run.held:
            raise _refuse(f"run {run.run_id} is already held")
        run.held = True
        ch.run(run)
        core.touch(run, out)
        return {"run": run.run_id, "held": True}
    job = _job(run, job_id)
    if job.state not in (JobState.WAITING, JobState.READY):
        raise _refuse(f"job {job.id} is {job.state}: only a waiting or ready job can be held")
    run.set_state(job, JobState.HELD)
    job.reason = "held by an operator"
    core.changed(run, job, ch, out)
    return {"run": run.run_id, "job": job.id, "state": str(job.state)}


def release(core: "Core", run: Run, job_id: Any, ch: Changes, out: "Outbound") -> dict[str, Any]:
    """Release a held run, or a held job (a job held after its executor was lost runs again)."""
    if job_id is None:
        if not run.held:
            raise _refuse(f"run {run.run_id} is not held")
        run.held = False
        ch.run(run)
        core.touch(run, out)
        core.requeue_ready(run)
        return {"run": run.run_id, "held": False}
    job = _job(run, job_id)
    if job.state != JobState.HELD:
        raise _refuse(f"job {job.id} is {job.state}, not held")
    run.reset(job)
    core.changed(run, job, ch, out)
    core.requeue_ready(run)
    return {"run": run.run_id, "job": job.id, "state": str(job.state)}


def skip(core: "Core", run: Run, job_id: Any, ch: Changes, out: "Outbound", now: float) -> dict[str, Any]:
    """Skip a job that has not started: when its turn comes it ends skipped, and what follows goes on.

    A job whose turn came (ready, or held once ready) ends at once; one that still waits for the jobs
    before it keeps waiting, so that nothing after it starts early, and passes when they succeeded (a
    skip replaces a hold).
    """
    job = _job(run, job_id)
    if job.state in ACTIVE_JOB_STATES:
        raise _refuse(f"job {job.id} is {job.state}: kill it first")
    if job.state in FINAL_JOB_STATES:
        raise _refuse(f"job {job.id} already ended {job.state}")
    if job.bypassed:
        raise _refuse(f"job {job.id} is already to be skipped when its turn comes")
    job.bypassed = True
    if job.pending > 0:
        if job.state == JobState.HELD:
            run.set_state(job, JobState.WAITING)
        job.reason = f"{SKIPPED_BY_OPERATOR}: passes when its turn comes"
        core.changed(run, job, ch, out)
    else:
        core.end_job(run, job, JobState.SKIPPED, None, SKIPPED_BY_OPERATOR, ch, out, now)
    return {"run": run.run_id, "job": job.id, "state": str(job.state)}


def kill(core: "Core", run: Run, job_id: Any, ch: Changes, out: "Outbound", now: float) -> dict[str, Any]:
    """Kill one running job (its whole process group, wherever it runs), or a whole run."""
    if job_id is not None:
        job = _job(run, job_id)
        if job.state not in ACTIVE_JOB_STATES:
            raise _refuse(f"job {job.id} is {job.state}: only a dispatched or running job can be killed")
        _kill_job(core, run, job, ch, out, now)
        return {"run": run.run_id, "job": job.id, "state": str(job.state)}
    if run.state != RunState.RUNNING:
        raise _refuse(f"run {run.run_id} is {run.state}: only a running run can be killed")
    run.stopping = True
    ch.run(run)
    killed = 0
    for job in list(run.jobs.values()):
        if job.state in ACTIVE_JOB_STATES:
            _kill_job(core, run, job, ch, out, now)
            killed += 1
    for job in list(run.jobs.values()):
        if job.state not in FINAL_JOB_STATES and job.state not in ACTIVE_JOB_STATES:
            run.set_state(job, JobState.SKIPPED)
            job.reason, job.ended_at = "not run: the run was killed", now
            core.changed(run, job, ch, out)
    core.maybe_end_run(run, ch, out, now)
    return {"run": run.run_id, "killed": killed, "state": str(run.state)}


def kill_request(core: "Core", run_id: str, target: str, aid: str, now: float) -> tuple[str, Envelope]:
    """The kill request for one attempt gone to ``target``, as ``(its control subject, envelope)`` to publish."""
    env = Envelope(Kind.CONTROL, core.server_id, {"action": "kill"}, core.epoch, run_id=run_id, ts=now)
    return subjects.control(target, aid), env


def _kill_job(core: "Core", run: Run, job: JobRun, ch: Changes, out: "Outbound", now: float) -> None:
    """Send a kill to every live attempt; one that never started ends killed at once."""
    if core.flow.kill_unit(run, job, ch, out, now):
        return  # a flow unit (a wait, a nested jobnet's child run, ...): the manager stops it itself
    started = False
    for attempt in job.live_attempts():
        if attempt.status:
            continue
        out.controls.append(kill_request(core, run.run_id, attempt.target, attempt.attempt_id, now))
        core.killed[attempt.attempt_id] = attempt.target
        started = started or attempt.started_at is not None
    if started:
        job.reason = KILL_REQUESTED
        ch.job(run, job)
        return
    for attempt in job.live_attempts():
        attempt.status, attempt.reason, attempt.finished_at = str(JobStatus.KILLED), "killed before it started", now
    core.end_job(run, job, JobState.KILLED, None, "killed by an operator before it started", ch, out, now)


def rerun(core: "Core", run: Run, args: dict[str, Any], ch: Changes, out: "Outbound", now: float) -> dict[str, Any]:
    """Run again the jobs that did not succeed (``failed``), one job and all after it (``from``), or one job."""
    if run.state == RunState.RUNNING:
        raise _refuse(f"run {run.run_id} is still running: rerun it once it has ended")
    mode, job_id = args.get("mode", "failed"), args.get("job")
    if mode not in RERUN_MODES:
        raise WireError(ErrorCode.INVALID, f"rerun mode must be one of {', '.join(RERUN_MODES)}")
    if mode == "failed":
        again = [j for j in run.jobs.values() if not run.satisfied(j)]
    elif mode == "from":
        start = _job(run, job_id)
        again = [start, *run.downstream(start.id)]
    else:
        again = [_job(run, job_id)]
    if not again:
        raise _refuse(f"run {run.run_id}: nothing to rerun, every job succeeded")
    for job in again:
        job.state = JobState.WAITING  # not final, so reset() counts it unsatisfied for the jobs after it
    for job in again:
        run.reset(job, ignore_after=mode == "only")
        core.changed(run, job, ch, out)
    core.reopen(run, ch, out, now)
    return {"run": run.run_id, "rerun": sorted(j.id for j in again)}


def set_status(
    core: "Core", run: Run, job_id: Any, state: Any, ch: Changes, out: "Outbound", now: float
) -> dict[str, Any]:
    """An operator fixed something by hand: set a job that is not running to succeeded, failed or skipped."""
    job = _job(run, job_id)
    if state not in SETTABLE_STATES:
        raise WireError(ErrorCode.INVALID, f"state must be one of {', '.join(SETTABLE_STATES)}")
    if job.state in ACTIVE_JOB_STATES:
        raise _refuse(f"job {job.id} is {job.state}: kill it first")
    target = SETTABLE_STATES[state]
    reopened = run.state != RunState.RUNNING
    if reopened:
        core.reopen(run, ch, out, now)
    if job.state in FINAL_JOB_STATES:
        run.set_state(job, JobState.WAITING)
    # Jobs skipped only because this one had not succeeded get their chance again.
    if target == JobState.SUCCEEDED or state == "skipped":
        for dep in run.downstream(job.id):
            if dep.state == JobState.SKIPPED and not dep.bypassed:
                run.set_state(dep, JobState.WAITING)
                dep.ended_at, dep.reason = None, ""
    job.bypassed = state == "skipped"
    core.end_job(run, job, target, job.exit_code, f"set to {state} by an operator", ch, out, now)
    for dep in run.downstream(job.id):
        if dep.state == JobState.WAITING:
            run.reset(dep)
            if any(run.jobs[d].state in FINAL_JOB_STATES and not run.satisfied(run.jobs[d]) for d in dep.job.after):
                run.set_state(dep, JobState.SKIPPED)
                dep.reason = "not run: a job it comes after did not succeed"
            core.changed(run, dep, ch, out)
    core.requeue_ready(run)
    core.maybe_end_run(run, ch, out, now)
    return {"run": run.run_id, "job": job.id, "state": str(job.state), "reopened": reopened}
