"""The in-memory picture of the runs a manager is walking; the site database holds the same, committed.

The core changes these objects and marks them dirty; the store writes the dirty ones in one transaction
per loop tick (group commit), so a row is always written from the object's latest state, whatever order
the changes came in.
"""

from dataclasses import dataclass, field

from engine import paths
from engine.flowstate import JobFlow, RunFlow
from engine.states import FINAL_JOB_STATES, JobState, RunState
from schemas.definitions import Job, Jobnet


@dataclass(slots=True)
class Attempt:
    """One try at running a job; its ID is also the dispatch's dedupe ID."""

    attempt_id: str
    n: int
    target: str
    dispatched_at: float
    accepted_at: float | None = None
    started_at: float | None = None
    finished_at: float | None = None
    #: when the executor says the attempt ended (its clock); ``finished_at`` is when the manager took it
    reported_at: float | None = None
    #: when a relay said the attempt is in its destination's JetStream queue
    queued_at: float | None = None
    status: str = ""
    exit_code: int | None = None
    host: str = ""
    pid: int | None = None
    reason: str = ""
    #: monotonic time of the last sign of life (dispatch, start, heartbeat); memory only
    seen_at: float = 0.0
    #: (stdout, stderr, bytes cut) of a finished attempt until it is written; memory is freed after commit
    output: tuple[bytes, bytes, int] | None = None
    #: seconds the manager waited before dispatching this attempt (a retry's delay), None for no retry
    delay_s: float | None = None


@dataclass(slots=True)
class JobRun:
    """One job within one run."""

    job: Job
    state: JobState
    #: jobs this one comes after that have not succeeded yet
    pending: int
    attempts: int = 0
    exit_code: int | None = None
    started_at: float | None = None
    ended_at: float | None = None
    current: Attempt | None = None
    #: a broadcast job's attempts of its current round, one per group member (agent name -> attempt)
    members: dict[str, Attempt] = field(default_factory=dict)
    #: why the job is where it is (shown in status): refusal, unreachable target, skip cause
    reason: str = ""
    #: skipped by an operator: the jobs after it go on as if it had succeeded
    bypassed: bool = False
    #: variables it set, flow units' progress, retries (``engine.flowstate``)
    flow: JobFlow = field(default_factory=JobFlow)

    @property
    def id(self) -> str:
        """The job's ID within its jobnet."""
        return self.job.id

    def attempt_of(self, attempt_id: str) -> Attempt | None:
        """This job's live attempt with that ID: the current one, or a broadcast member's."""
        if self.current is not None and self.current.attempt_id == attempt_id:
            return self.current
        return next((a for a in self.members.values() if a.attempt_id == attempt_id), None)

    def live_attempts(self) -> list[Attempt]:
        """Every attempt of the job's current round."""
        return list(self.members.values()) if self.members else [self.current] if self.current else []


@dataclass(slots=True)
class Run:
    """One run of one version of a jobnet."""

    run_id: str
    jobnet: Jobnet
    version: int
    state: RunState
    created_at: float
    jobs: dict[str, JobRun]
    dependants: dict[str, list[str]]
    ended_at: float | None = None
    tenant: str = ""
    params: dict[str, str] = field(default_factory=dict)
    #: jobs not yet in a final state; the run is settled when none is left
    remaining: int = 0
    #: held by an operator: nothing new starts until it is released
    held: bool = False
    #: killed by an operator: it ends stopped
    stopping: bool = False
    #: wall-clock time a rerun reopened it after it ended (its timeout and delay watch count from then)
    reopened_at: float | None = None
    #: the submitter's dedupe key: a second submission with it returns this run
    dedupe_key: str | None = None
    #: variables, parent unit, forced end state (``engine.flowstate``)
    flow: RunFlow = field(default_factory=RunFlow)

    @classmethod
    def new(cls, run_id: str, jobnet: Jobnet, version: int, now: float, params: dict[str, str]) -> "Run":
        """A run that has not started any job yet (every job waiting or ready)."""
        jobs = {
            j.id: JobRun(job=j, state=JobState.READY if not j.after else JobState.WAITING, pending=len(j.after))
            for j in jobnet.jobs
        }
        return cls(
            run_id=run_id,
            jobnet=jobnet,
            version=version,
            state=RunState.RUNNING,
            created_at=now,
            jobs=jobs,
            dependants=dependants_of(jobnet),
            tenant=jobnet.tenant,
            params=params,
            remaining=len(jobs),
        )

    def ready(self) -> list[JobRun]:
        """Jobs that may be dispatched now."""
        return [j for j in self.jobs.values() if j.state == JobState.READY]

    def is_settled(self) -> bool:
        """Every job reached a final state: the run can end.

        A job left waiting always has an upstream job that is not final, since a job that did not succeed
        skips everything after it; so "no job active or ready" and "every job final" are the same.
        """
        return self.remaining == 0

    def set_state(self, job: JobRun, state: JobState) -> None:
        """Move a job to ``state``, keeping count of the jobs not yet final."""
        was_final = job.state in FINAL_JOB_STATES
        job.state = state
        self.remaining += int(was_final) - int(state in FINAL_JOB_STATES)

    def recount(self) -> None:
        """Count the jobs not yet final again (after loading a run from the database)."""
        self.remaining = sum(1 for j in self.jobs.values() if j.state not in FINAL_JOB_STATES)

    def final_state(self) -> RunState:
        """The state the run ends in once settled."""
        if self.flow.forced is not None:
            return RunState(self.flow.forced)
        if self.stopping:
            return RunState.STOPPED
        if all(self.satisfied(j) for j in self.jobs.values()):
            return RunState.SUCCEEDED
        return RunState.FAILED

    @staticmethod
    def satisfied(job: JobRun) -> bool:
        """Whether the jobs after ``job`` may start: it succeeded (or ended with a warning), an operator
        skipped it, a branch did not take it, or it failed with ``continue_on_failure`` (``engine.paths``)."""
        return paths.satisfied(job)

    def reset(self, job: JobRun, ignore_after: bool = False) -> None:
        """Make a job runnable again (rerun): waiting for what it comes after, or ready."""
        job.pending = 0 if ignore_after else paths.pending_of(self.jobs, job)
        self.set_state(job, JobState.READY if job.pending == 0 else JobState.WAITING)
        job.exit_code = job.started_at = job.ended_at = None
        job.current, job.members, job.reason, job.bypassed = None, {}, "", False
        job.flow = JobFlow(written=job.flow.written)  # a written row is written again, reset

    def downstream(self, job_id: str) -> list[JobRun]:
        """Every job after ``job_id``, transitively, in no particular order."""
        seen: dict[str, JobRun] = {}
        stack = list(self.dependants.get(job_id, ()))
        while stack:
            dep_id = stack.pop()
            if dep_id not in seen:
                seen[dep_id] = self.jobs[dep_id]
                stack.extend(self.dependants.get(dep_id, ()))
        return list(seen.values())


def dependants_of(jobnet: Jobnet) -> dict[str, list[str]]:
    """For each job, the jobs that come directly after it."""
    out: dict[str, list[str]] = {j.id: [] for j in jobnet.jobs}
    for j in jobnet.jobs:
        for dep in j.after:
            out[dep].append(j.id)
    return out
