"""An exclusive lock released after its holder's manager was SIGKILLed, on the real stack.

A nats-server, an active-standby manager pair with a 2 s lease, relay ``main`` and workers of ``cloud``.
Two locks, each held by a running shell job of one jobnet while a job of another jobnet waits for it.
Every job checks exclusion for itself: it enters by ``mkdir DIR/inside`` (and fails with exit code 3 if
that exists: someone else is inside), writes its mark, waits for ``DIR/go`` and leaves by ``rmdir``; a
SIGTERM (an operator's kill) makes it leave too. The active manager is SIGKILLed while both locks are
held; the standby takes over and must know the holders and the waiters. Then one holder ends by itself
and the other is killed by an operator, and each lock must pass to its waiter, which runs once and
succeeds.
"""

import asyncio
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from ekiden.client import ApiClient
from ekiden.up import Stack
from tests.e2e.procs import DEST, RELAY, TAKEOVER_TIMEOUT_S, call, ha_stack
from tests.shell import wait_for_file

REPO = Path(__file__).resolve().parents[2]

#: Exit code of a job that found someone else inside its lock's directory.
BOTH_INSIDE = 3
#: A job inside its lock: enter (or fail), leave a mark, wait for the go file, leave; leave on SIGTERM too.
SCRIPT = f"""
D="$1"
mkdir "$D/inside" || exit {BOTH_INSIDE}
trap 'rmdir "$D/inside"; exit 143' TERM
echo "$0" >> "$D/marks"
{wait_for_file('"$D/go"')}
rmdir "$D/inside"
"""
#: Seconds to wait for any one thing the stack does (generous: the machine may be loaded).
WAIT_S = 60.0


@pytest.fixture
async def ha(tmp_path: Path) -> AsyncIterator[tuple[Stack, ApiClient]]:
    async with ha_stack(tmp_path / "site") as pair:
        yield pair


@dataclass(frozen=True)
class Contest:
    """One lock, its directory, the run that holds it and the run that waits for it."""

    lock: str
    dir: Path
    holder: str
    waiter: str

    def marks(self) -> list[str]:
        """The marks written in the lock's directory, in order (one per job that got inside)."""
        path = self.dir / "marks"
        return path.read_text().split() if path.exists() else []


def _jobnet(name: str, lock: str, work: Path) -> dict[str, Any]:
    """One job that takes ``lock`` and marks its directory with the jobnet's name."""
    job = {"id": "work", "dest": DEST, "locks": [lock], "cmd": ["sh", "-c", SCRIPT, name, str(work / lock)]}
    return {"job": [job]}


async def _job(client: ApiClient, run: str) -> dict[str, Any]:
    doc = await call(client, "status", run=run)
    found: dict[str, Any] = next(j for j in doc["jobs"] if j["id"] == "work")
    return found


async def _until(client: ApiClient, run: str, what: str, ok: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """Poll the run's job (through a failover) until ``ok`` holds; fail after ``WAIT_S``."""
    deadline = time.monotonic() + WAIT_S
    while not ok(job := await _job(client, run)):
        assert time.monotonic() < deadline, f"run {run}: not {what} within {WAIT_S:g}s: {job}"
        await asyncio.sleep(0.1)
    return job


async def _ended(client: ApiClient, run: str) -> dict[str, Any]:
    deadline = time.monotonic() + WAIT_S
    while (doc := await call(client, "status", run=run))["state"] == "running":
        assert time.monotonic() < deadline, f"run {run} still running after {WAIT_S:g}s: {doc}"
        await asyncio.sleep(0.1)
    found: dict[str, Any] = next(j for j in doc["jobs"] if j["id"] == "work")
    return found


async def _held_and_awaited(client: ApiClient, contests: list[Contest]) -> None:
    """Each lock is held by its holder's job, which runs, and awaited by its waiter's job, which has not started."""
    locks = {doc["name"]: doc for doc in await call(client, "locks")}
    for c in contests:
        held_by = f"{c.holder}:work"
        assert locks[c.lock] == {
            "name": c.lock,
            "capacity": 1,
            "holders": [{"holder": held_by, "weight": 1}],
            "waiters": [f"{c.waiter}:work"],
        }
        holder = await _job(client, c.holder)
        assert (holder["state"], holder["attempts"]) == ("running", 1), holder
        waiter = await _job(client, c.waiter)
        assert (waiter["state"], waiter["attempts"]) == ("ready", 0), waiter
        assert waiter["reason"].startswith(f"waiting for lock {c.lock} (1/1 held by {held_by})"), waiter
        assert c.marks() == [f"hold-{c.lock}"], "only the holder got inside"


def _ls_locks(stack: Stack) -> str:
    argv = [sys.executable, "-m", "ekiden", "ls", "locks", "--nats", stack.endpoint.nats_url, "--site", str(stack.site)]
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def test_locks_are_released_after_their_holders_manager_was_sigkilled(
    ha: tuple[Stack, ApiClient], tmp_path: Path
) -> None:
    stack, client = ha
    names = ("db", "tape")  # db: the holder ends by itself; tape: an operator kills it
    for lock in names:
        (tmp_path / lock).mkdir()
    defs: dict[str, Any] = {
        "destination": {DEST: {"relay": RELAY}},
        "lock": {lock: {} for lock in names},
        "jobnet": {
            f"{role}-{lock}": _jobnet(f"{role}-{lock}", lock, tmp_path) for lock in names for role in ("hold", "wait")
        },
    }
    await call(client, "apply", definitions=defs)
    await stack.wait_for_standbys(1, WAIT_S)

    holders = {lock: (await call(client, "run", jobnet=f"hold-{lock}"))["run"] for lock in names}
    for lock, run in holders.items():
        await _until(client, run, "running", lambda j: j["state"] == "running")
        deadline = time.monotonic() + WAIT_S
        while not (tmp_path / lock / "marks").exists():
            assert time.monotonic() < deadline, f"the holder of {lock} did not get inside"
            await asyncio.sleep(0.05)
    contests = [
        Contest(lock, tmp_path / lock, holders[lock], (await call(client, "run", jobnet=f"wait-{lock}"))["run"])
        for lock in names
    ]
    for c in contests:
        await _until(client, c.waiter, "waiting for its lock", lambda j: j["reason"].startswith("waiting for lock"))
    await _held_and_awaited(client, contests)

    killed = await stack.signal_active(signal.SIGKILL)
    lease = await stack.wait_for_takeover(killed.epoch, TAKEOVER_TIMEOUT_S)
    assert lease["pid"] != killed.pid
    # The new active manager knows who holds each lock and who waits for it; nobody else got in.
    await _held_and_awaited(client, contests)
    listing = await asyncio.to_thread(_ls_locks, stack)
    for c in contests:
        row = next(line for line in listing.splitlines() if line.startswith(f"{c.lock} "))
        assert row.split() == [c.lock, "1/1", f"{c.holder}:work", f"{c.waiter}:work"], listing

    db, tape = contests
    # The holder of db ends by itself: the lock passes to its waiter.
    (db.dir / "go").touch()
    held = await _ended(client, db.holder)
    assert (held["state"], held["exit_code"]) == ("succeeded", 0), held
    waited = await _ended(client, db.waiter)
    assert (waited["state"], waited["exit_code"], waited["attempts"]) == ("succeeded", 0, 1), waited

    # An operator kills the holder of tape: the lock passes to its waiter once the job is gone.
    await call(client, "kill", run=tape.holder, job="work")
    killed_job = await _ended(client, tape.holder)
    assert killed_job["state"] == "killed", killed_job
    await _until(client, tape.waiter, "running", lambda j: j["state"] == "running")
    (tape.dir / "go").touch()
    waited = await _ended(client, tape.waiter)
    assert (waited["state"], waited["exit_code"], waited["attempts"]) == ("succeeded", 0, 1), waited

    for c in contests:
        # Each job got inside exactly once, the holder first: nothing ran twice across the failover.
        assert c.marks() == [f"hold-{c.lock}", f"wait-{c.lock}"]
        assert (await _job(client, c.holder))["attempts"] == 1
        assert not (c.dir / "inside").exists()
    locks = {doc["name"]: doc for doc in await call(client, "locks")}
    assert {name: (doc["holders"], doc["waiters"]) for name, doc in locks.items()} == {n: ([], []) for n in names}
