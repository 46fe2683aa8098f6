"""The states a run and a job can be in, and how an attempt's reported status maps onto them."""

from enum import StrEnum

from schemas.messages import JobStatus


class RunState(StrEnum):
    """Where a run is."""

    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    STOPPED = "stopped"


class JobState(StrEnum):
    """Where a job of a run is."""

    WAITING = "waiting"  #: some job it comes after has not succeeded yet
    READY = "ready"  #: may start; not yet dispatched
    DISPATCHED = "dispatched"  #: sent to a relay or agent, not yet started
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    WARNING = "warning"  #: ended with an exit code its judgment calls a warning: the flow goes on
    FAILED = "failed"
    TIMED_OUT = "timed_out"
    KILLED = "killed"
    SKIPPED = "skipped"  #: will not run (a job it comes after did not succeed)
    LOST = "lost"  #: its executor was lost and it may not run again
    HELD = "held"
    RETRY_WAIT = "retry_wait"  #: an attempt failed; the next one is dispatched once its retry delay passed


#: Job states a job never leaves (until an operator reruns it).
FINAL_JOB_STATES = frozenset(
    {
        JobState.SUCCEEDED,
        JobState.WARNING,
        JobState.FAILED,
        JobState.TIMED_OUT,
        JobState.KILLED,
        JobState.SKIPPED,
        JobState.LOST,
    }
)
#: Job states in which an attempt exists that has not ended.
ACTIVE_JOB_STATES = frozenset({JobState.DISPATCHED, JobState.RUNNING})
#: Run states a run never leaves.
FINAL_RUN_STATES = frozenset({RunState.SUCCEEDED, RunState.FAILED, RunState.STOPPED})

#: The job state an attempt's reported end status puts the job in.
STATE_OF_STATUS: dict[JobStatus, JobState] = {
    JobStatus.SUCCEEDED: JobState.SUCCEEDED,
    JobStatus.FAILED: JobState.FAILED,
    JobStatus.TIMED_OUT: JobState.TIMED_OUT,
    JobStatus.KILLED: JobState.KILLED,
    JobStatus.ERROR: JobState.FAILED,
    JobStatus.LOST: JobState.LOST,
}
