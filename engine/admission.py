"""What may start now: named resource locks and concurrency limits.

Pure bookkeeping. A job takes its locks (and its run takes the jobnet's locks) when it is dispatched and
gives them back when it ends or leaves the running states (lost, held, killed), so a lock is never held
by a job that does not run. The holders are written to the site database in the same transaction, so a
manager that takes over knows them; running counts are rebuilt from the live attempts.
"""

from collections import Counter
from dataclasses import dataclass, field

from engine.runs import JobRun, Run
from schemas.definitions import Definitions
from schemas.resources import Lock, LockUse

#: Capacity of a lock that no definition names (it is exclusive).
DEFAULT_CAPACITY = 1


@dataclass(slots=True)
class Admission:
    """Lock holders and running counts of one manager."""

    locks: dict[str, Lock] = field(default_factory=dict)
    #: lock name -> holder ("run" or "run:job") -> weight
    holders: dict[str, dict[str, int]] = field(default_factory=dict)
    #: jobs running per "dest:NAME", "agent:NAME" and "jobnet:NAME"
    running: Counter[str] = field(default_factory=Counter)
    #: what each active job was counted under, so that it is counted off exactly once
    counted: dict[str, tuple[str, ...]] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)

    def define(self, defs: Definitions) -> None:
        """Take applied locks and limits."""
        self.locks.update(defs.locks)
        for kind, table in (("dest", defs.destinations), ("agent", defs.agents)):
            for name, item in table.items():
                self._limit(f"{kind}:{name}", item.max_running)
        for name, net in defs.jobnets.items():
            self._limit(f"jobnet:{name}", net.max_running)

    def _limit(self, key: str, value: int | None) -> None:
        if value is None:
            self.limits.pop(key, None)
        else:
            self.limits[key] = value

    def refusal(self, run: Run, job: JobRun, targets: list[str]) -> str:
        """Why the job may not start now ('' if it may): a lock it needs is taken, or a limit is reached."""
        for key in (*targets, f"jobnet:{run.jobnet.name}"):
            limit = self.limits.get(key)
            if limit is not None and self.running[key] >= limit:
                return f"{key.replace(':', ' ', 1)} is at its limit of {limit} running jobs"
        if run.jobnet.locks and not self._holds(run.run_id, run.jobnet.locks):
            reason = self._lock_refusal(run.jobnet.locks, run.run_id)
            if reason:
                return reason
        return self._lock_refusal(job.job.locks, _holder(run, job))

    def admit(self, run: Run, job: JobRun, targets: list[str], now: float) -> list[tuple[str, str, int, str, float]]:
        """Count the job as running and take its (and its run's) locks; return the holder rows to write."""
        keys = (*targets, f"jobnet:{run.jobnet.name}")
        self.running.update(keys)
        self.counted[_holder(run, job)] = keys
        rows: list[tuple[str, str, int, str, float]] = []
        if run.jobnet.locks and not self._holds(run.run_id, run.jobnet.locks):
            rows += self._take(run.jobnet.locks, run.run_id, now)
        return rows + self._take(job.job.locks, _holder(run, job), now)

    def leave(self, run: Run, job: JobRun) -> list[tuple[str, str]]:
        """The job stopped running: count it off and give its locks back; return the holder rows to delete."""
        keys = self.counted.pop(_holder(run, job), ())
        self.running.subtract(keys)
        return self._give(_holder(run, job))

    def end_run(self, run: Run) -> list[tuple[str, str]]:
        """The run ended: give the jobnet's locks back."""
        return self._give(run.run_id)

    def restore_holder(self, lock: str, holder: str, weight: int) -> None:
        """A holder row read at takeover."""
        self.holders.setdefault(lock, {})[holder] = weight

    def restore_running(self, run: Run, job: JobRun, targets: list[str]) -> None:
        """An active job found at takeover."""
        keys = (*targets, f"jobnet:{run.jobnet.name}")
        self.running.update(keys)
        self.counted[_holder(run, job)] = keys

    def _holds(self, holder: str, uses: tuple[LockUse, ...]) -> bool:
        return all(holder in self.holders.get(u.name, {}) for u in uses)

    def _lock_refusal(self, uses: tuple[LockUse, ...], holder: str) -> str:
        for use in uses:
            capacity = self.locks[use.name].capacity if use.name in self.locks else DEFAULT_CAPACITY
            others = {h: w for h, w in self.holders.get(use.name, {}).items() if h != holder}
            if sum(others.values()) + use.weight > capacity:
                by = ", ".join(sorted(others))
                return f"waiting for lock {use.name} ({sum(others.values())}/{capacity} held by {by})"
        return ""

    def _take(self, uses: tuple[LockUse, ...], holder: str, now: float) -> list[tuple[str, str, int, str, float]]:
        rows = []
        for use in uses:
            self.holders.setdefault(use.name, {})[holder] = use.weight
            capacity = self.locks[use.name].capacity if use.name in self.locks else DEFAULT_CAPACITY
            rows.append((use.name, holder, use.weight, "exclusive" if capacity == 1 else "shared", now))
        return rows

    def _give(self, holder: str) -> list[tuple[str, str]]:
        rows = []
        for lock, held in self.holders.items():
            if held.pop(holder, None) is not None:
                rows.append((lock, holder))
        return rows


def _holder(run: Run, job: JobRun) -> str:
    return f"{run.run_id}:{job.id}"
