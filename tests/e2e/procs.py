"""The fault tests' harness: an HA stack on one site, jobnets whose jobs leave a mark, outcomes read back.

Processes are started, signalled and restarted by ``ekiden.up.Stack`` (the launcher of ``ekiden up`` and
``bench/failover.py``, here with a manager pair and a short lease); this module adds what the tests
check: a jobnet whose every job appends its ID to a file, and the run's outcome read from the site
database with the same read-only reader as ``ekiden site status``.
"""

import asyncio
import time
from collections import Counter
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekiden.client import ApiClient
from ekiden.up import Signalled, Stack, StackPlan
from engine.sitefile import first_dispatch_after, open_read_only
from schemas.errors import ErrorCode, WireError

#: The destination and relay of every job.
DEST = "cloud"
RELAY = "main"
#: Seconds the managers' lease lasts: short, so that a takeover comes within a few seconds.
LEASE_S = 2.0
#: Seconds a takeover may take before a test fails (generous: the machine may be loaded).
TAKEOVER_TIMEOUT_S = 30.0
#: The call target that leaves the mark.
MARK = "tests.e2e.jobs:mark"


@asynccontextmanager
async def ha_stack(site: Path, lease_s: float = LEASE_S) -> AsyncIterator[tuple[Stack, ApiClient]]:
    """A nats-server, an active-standby manager pair, relay ``main`` and two workers of ``cloud`` (8 slots each)."""
    stack = Stack(site)
    plan = StackPlan(
        relays=(RELAY,),
        destinations=(DEST,),
        agents=(),
        workers_per_destination=2,
        worker_concurrency=8,
        managers=2,
        lease_s=lease_s,
    )
    try:
        await stack.start(plan)
        client = await ApiClient.connect(stack.endpoint, timeout_s=10)
        try:
            yield stack, client
        finally:
            await client.close()
    finally:
        await stack.stop()


async def call(client: ApiClient, verb: str, timeout_s: float = 60.0, **args: Any) -> Any:
    """Call an API verb, retrying while no manager answers (between a manager's death and the takeover)."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return await client.call(verb, **args)
        except WireError as exc:
            if exc.code != ErrorCode.UNAVAILABLE or time.monotonic() > deadline:
                raise
        await asyncio.sleep(0.2)


def marked_jobnet(name: str, marks: Path, chains: int, length: int, delay_s: float) -> dict[str, Any]:
    """Definitions of a jobnet of ``chains`` parallel chains of ``length`` jobs on destination ``cloud``.

    Every job appends its ID to ``marks`` after ``delay_s``. A mix: most are ``call`` jobs, every 7th an
    argv ``sh -c`` job (a subprocess), and every 5th has ``restart = false``.
    """
    jobs: list[dict[str, Any]] = []
    for c in range(chains):
        for i in range(length):
            job_id, n = f"c{c}-{i}", c * length + i
            job: dict[str, Any]
            if n % 7 == 3:
                script = f'sleep {delay_s:g}; echo "$0" >> "$1"'
                job = {"id": job_id, "cmd": ["sh", "-c", script, job_id, str(marks)]}
            else:
                job = {"id": job_id, "call": MARK, "args": {"path": str(marks), "line": job_id, "delay_s": delay_s}}
            job["dest"] = DEST
            if i:
                job["after"] = [f"c{c}-{i - 1}"]
            if n % 5 == 1:
                job["restart"] = False
            jobs.append(job)
    return {"destination": {DEST: {"relay": RELAY}}, "jobnet": {name: {"job": jobs}}}


def job_ids(chains: int, length: int) -> set[str]:
    """The job IDs of ``marked_jobnet(..., chains, length, ...)``."""
    return {f"c{c}-{i}" for c in range(chains) for i in range(length)}


def rows(site: Path, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """A read-only query of the site database."""
    with open_read_only(site) as db:
        return db.execute(sql, params).fetchall()


async def wait_for_succeeded(site: Path, run_id: str, count: int, timeout_s: float = 60.0) -> None:
    """Wait until at least ``count`` jobs of the run have succeeded (read from the site database)."""
    deadline = time.monotonic() + timeout_s
    sql = "SELECT COUNT(*) FROM jobs WHERE run_id=? AND state='succeeded'"
    while (await asyncio.to_thread(rows, site, sql, (int(run_id),)))[0][0] < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id}: fewer than {count} jobs succeeded within {timeout_s:g}s")
        await asyncio.sleep(0.01)


async def wait_for_end(site: Path, run_id: str, timeout_s: float = 90.0) -> str:
    """Wait until the run is no longer running; return its state."""
    deadline = time.monotonic() + timeout_s
    sql = "SELECT state FROM runs WHERE run_id=?"
    while (state := (await asyncio.to_thread(rows, site, sql, (int(run_id),)))[0][0]) == "running":
        if time.monotonic() > deadline:
            raise AssertionError(f"run {run_id} still running after {timeout_s:g}s")
        await asyncio.sleep(0.05)
    return str(state)


@dataclass(frozen=True)
class Outcome:
    """What a run left behind: its state, each job's state and attempt rows, and the marks its jobs wrote."""

    run_state: str
    job_states: dict[str, str]
    attempts: dict[str, int]
    marks: Counter[str]

    def not_succeeded(self) -> dict[str, str]:
        """Jobs that did not succeed, with their state."""
        return {j: s for j, s in self.job_states.items() if s != "succeeded"}

    def not_once(self, ids: set[str]) -> dict[str, int]:
        """Jobs whose mark is missing or appears more than once, with the count (and marks of no job)."""
        return {j: self.marks[j] for j in ids | set(self.marks) if self.marks[j] != 1 or j not in ids}

    def dispatched_again(self) -> dict[str, int]:
        """Jobs with more than one attempt, with the count."""
        return {j: n for j, n in self.attempts.items() if n != 1}


def outcome(site: Path, run_id: str, marks: Path) -> Outcome:
    """Read a finished run's outcome from the site database and its marks file."""
    run = int(run_id)
    (state,) = rows(site, "SELECT state FROM runs WHERE run_id=?", (run,))[0]
    jobs = dict(rows(site, "SELECT job_id, state FROM jobs WHERE run_id=?", (run,)))
    attempts = dict(rows(site, "SELECT job_id, COUNT(*) FROM attempts WHERE run_id=? GROUP BY job_id", (run,)))
    lines = marks.read_text().split() if marks.exists() else []
    return Outcome(state, jobs, attempts, Counter(lines))


@dataclass(frozen=True)
class Takeover:
    """How long a standby took to carry on after the active manager was signalled."""

    signalled: Signalled
    new_pid: int
    new_epoch: int
    #: seconds from the signal to the new active manager's lease commit (its first commit)
    lease_taken_s: float
    #: seconds from the signal to its first new dispatch (None if it had nothing left to dispatch)
    first_dispatch_s: float | None


def timed_takeover(site: Path, signalled: Signalled, lease: dict[str, Any]) -> Takeover:
    """Time a takeover once the run has ended (every dispatch the new active manager made is committed)."""
    first = first_dispatch_after(site, lease["acquired_at"])
    return Takeover(
        signalled,
        lease["pid"],
        lease["epoch"],
        lease["acquired_at"] - signalled.at,
        None if first is None else first - signalled.at,
    )
