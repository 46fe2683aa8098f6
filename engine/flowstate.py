"""The flow state the manager keeps per run and per job beside their rows: variables, units' progress, timers.

Plain runs and jobs keep the defaults and write nothing; a run or job whose flow state changed is written
to ``run_flow`` / ``job_flow`` (``engine.flowstore``) in the same transaction as its row.
"""

from dataclasses import dataclass, field, fields
from typing import Any


@dataclass(slots=True)
class RunFlow:
    """A run's variables and the flow facts about it."""

    #: variables set during the run (by jobs, loops, info units, nested jobnets); parameters are ``Run.params``
    variables: dict[str, str] = field(default_factory=dict)
    #: ``"RUN:JOB"`` of the unit that started this run (a nested jobnet or a loop iteration)
    parent: str | None = None
    #: the end state the run takes whatever its jobs say (an end unit, a run timeout)
    forced: str | None = None
    #: why the run ended as it did, or what happened to it (shown in status)
    note: str = ""
    #: waits behind earlier runs of its jobnet (``instances = "queue"``)
    queued: bool = False
    #: its end-delay watch fired
    delayed: bool = False

    def is_plain(self) -> bool:
        """Whether there is nothing to write."""
        return not (self.variables or self.parent or self.forced or self.note or self.queued or self.delayed)

    def state(self) -> dict[str, Any]:
        """What is written besides the variables and the parent."""
        return {k: v for k, v in (("forced", self.forced), ("note", self.note)) if v} | {
            k: True for k in ("queued", "delayed") if getattr(self, k)
        }

    def load(self, variables: dict[str, str], parent: str | None, state: dict[str, Any]) -> None:
        """Take what was written."""
        self.variables, self.parent = dict(variables), parent
        self.forced, self.note = state.get("forced"), str(state.get("note", ""))
        self.queued, self.delayed = bool(state.get("queued")), bool(state.get("delayed"))


@dataclass(slots=True)
class JobFlow:
    """A job's (or flow unit's) variables and progress."""

    #: variables the job set (its stdout's marked lines, an info unit's facts, what a child run set)
    variables: dict[str, str] = field(default_factory=dict)
    #: ended skipped because a branch did not take it (or nothing before it was taken): it fails nothing
    untaken: bool = False
    #: seconds waited before each retry so far (the first retry's delay first)
    retries: list[float] = field(default_factory=list)
    #: wall-clock time the next attempt is due (state retry_wait)
    retry_at: float | None = None
    #: the delay waited before the next attempt, recorded in that attempt when it is dispatched
    next_delay_s: float | None = None
    #: when the unit started (flow units; a job's start is its attempt's dispatch)
    started_at: float | None = None
    #: wall-clock time a wait unit ends
    wait_until: float | None = None
    #: its end-delay watch fired
    delayed: bool = False
    #: a nested jobnet's or loop's child runs, oldest first (the last is the current one)
    children: list[str] = field(default_factory=list)
    #: a loop's iteration (1-based; 0 before the first)
    iteration: int = 0
    #: what a flow unit did (a branch's decision, a loop's end), shown in status
    note: str = ""
    #: the job has a row in ``job_flow``: a change (a rerun's reset too) must write it again; memory only
    written: bool = field(default=False, compare=False)

    def is_plain(self) -> bool:
        """Whether there is nothing to write."""
        return self == _PLAIN_JOB_FLOW

    def state(self) -> dict[str, Any]:
        """What is written besides the variables (defaults left out)."""
        skip = ("variables", "written")
        return {
            f.name: getattr(self, f.name)
            for f in fields(self)
            if f.name not in skip and getattr(self, f.name) != getattr(_PLAIN_JOB_FLOW, f.name)
        }

    def load(self, variables: dict[str, str], state: dict[str, Any]) -> None:
        """Take what was written."""
        self.variables = dict(variables)
        self.untaken = bool(state.get("untaken"))
        self.retries = [float(d) for d in state.get("retries", [])]
        self.retry_at, self.started_at = state.get("retry_at"), state.get("started_at")
        self.next_delay_s = state.get("next_delay_s")
        self.wait_until, self.delayed = state.get("wait_until"), bool(state.get("delayed"))
        self.children = [str(c) for c in state.get("children", [])]
        self.iteration, self.note = int(state.get("iteration", 0)), str(state.get("note", ""))
        self.written = True


_PLAIN_JOB_FLOW = JobFlow()
