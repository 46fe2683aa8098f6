"""What a unit's end means for the units after it: release them, skip them, or leave them untaken.

The rules (pure, on the in-memory run):

- A unit is *satisfied* when the units after it may go on: it succeeded or ended with a warning, an
  operator skipped it, a branch did not take it, or it failed with ``continue_on_failure``.
- A plain unit runs once everything it comes after is satisfied; one that is not (it failed, or was skipped
  because of a failure) skips it at once, and everything after it.
- A *recovery* unit waits until everything it comes after has ended, then runs if one of them ended
  abnormally, and is otherwise left untaken.
- A *branch* waits until everything it comes after has ended, whatever the end (it may test a failure),
  unless one of them was skipped because of a failure.
- A unit whose predecessors were all left untaken is left untaken too (a join after a branch waits only for
  the path taken). An untaken unit ends ``skipped`` and fails nothing.
"""

from typing import TYPE_CHECKING

from engine.states import ACTIVE_JOB_STATES, FINAL_JOB_STATES, JobState
from schemas.units import UnitKind

if TYPE_CHECKING:
    from engine.runs import JobRun, Run

#: End states that are an abnormal end (what a recovery unit handles).
ABNORMAL_JOB_STATES = frozenset({JobState.FAILED, JobState.TIMED_OUT, JobState.KILLED, JobState.LOST})
#: The reason of a job an operator skipped (it ends as if it succeeded).
SKIPPED_BY_OPERATOR = "skipped by an operator"


def satisfied(job: "JobRun") -> bool:
    """Whether the units after ``job`` may go on."""
    state = job.state
    if state in (JobState.SUCCEEDED, JobState.WARNING):
        return True
    if state == JobState.SKIPPED:
        return job.bypassed or job.flow.untaken
    return state in ABNORMAL_JOB_STATES and job.job.unit.continue_on_failure


def _waits_for_end(job: "JobRun") -> bool:
    """A unit that runs once what it comes after ended, whatever the end (recovery units and branches)."""
    return job.job.unit.recovery or job.job.unit.kind == UnitKind.BRANCH


def pending_of(jobs: "dict[str, JobRun]", job: "JobRun") -> int:
    """How many units ``job`` still waits for (its ``pending`` count, rebuilt after loading or a rerun)."""
    if _waits_for_end(job):
        return sum(1 for d in job.job.after if jobs[d].state not in FINAL_JOB_STATES)
    return sum(1 for d in job.job.after if not satisfied(jobs[d]))


def settle(run: "Run", ended: "JobRun") -> "tuple[list[JobRun], list[JobRun]]":
    """``ended`` reached a final state: decide what follows for the units after it, transitively.

    Returns:
        The units that became ready, and the units that ended now (skipped, or untaken).
    """
    ready: list[JobRun] = []
    changed: list[JobRun] = []
    stack = [ended]
    while stack:
        src = stack.pop()
        ok = satisfied(src)
        failure_skip = src.state == JobState.SKIPPED and not ok
        for dep_id in run.dependants.get(src.id, ()):
            dep = run.jobs[dep_id]
            if dep.state in FINAL_JOB_STATES or dep.state in ACTIVE_JOB_STATES:
                continue
            recovery, branch = dep.job.unit.recovery, dep.job.unit.kind == UnitKind.BRANCH
            if not ok and not recovery and (not branch or failure_skip):
                run.set_state(dep, JobState.SKIPPED)
                dep.bypassed = False  # skipped by an operator too, but the flow stopped before it
                dep.reason = f"not run: {ended.id} did not succeed"
                changed.append(dep)
                stack.append(dep)
                continue
            dep.pending -= 1
            if dep.pending > 0 or dep.state != JobState.WAITING:
                continue
            if _taken(run, dep) and dep.bypassed:
                # An operator skipped it before its turn: now that its turn came, it passes.
                run.set_state(dep, JobState.SKIPPED)
                dep.reason = SKIPPED_BY_OPERATOR
                changed.append(dep)
                stack.append(dep)
            elif _taken(run, dep):
                dep.state = JobState.READY
                ready.append(dep)
            else:
                leave_untaken(run, dep, _untaken_reason(run, dep))
                changed.append(dep)
                stack.append(dep)
    return ready, changed


def _taken(run: "Run", job: "JobRun") -> bool:
    """Whether a unit whose predecessors all ended runs (False: it is left untaken)."""
    before = [run.jobs[d] for d in job.job.after]
    if job.job.unit.recovery:
        return any(b.state in ABNORMAL_JOB_STATES for b in before)
    return not before or not all(b.flow.untaken for b in before)


def _untaken_reason(run: "Run", job: "JobRun") -> str:
    if job.job.unit.recovery:
        return "not run: nothing it recovers ended abnormally"
    return "not run: the path to it was not taken"


def leave_untaken(run: "Run", job: "JobRun", reason: str) -> None:
    """End a unit skipped as not taken: it fails nothing, and what comes only after it is not taken either."""
    run.set_state(job, JobState.SKIPPED)
    job.flow.untaken = True
    job.reason = reason


def branch_off(run: "Run", branch: "JobRun", taken: set[str]) -> "tuple[list[JobRun], list[JobRun]]":
    """A branch decided: leave the units after it that it did not take untaken, and what follows from that.

    Returns:
        The units that became ready, and the units that ended now.
    """
    ready: list[JobRun] = []
    changed: list[JobRun] = []
    for dep_id in run.dependants.get(branch.id, ()):
        dep = run.jobs[dep_id]
        if dep_id in taken or dep.state in FINAL_JOB_STATES or dep.state in ACTIVE_JOB_STATES:
            continue
        leave_untaken(run, dep, f"not run: branch {branch.id} did not take it")
        changed.append(dep)
        more_ready, more_changed = settle(run, dep)
        ready += more_ready
        changed += more_changed
    return ready, changed
