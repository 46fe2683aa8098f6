"""Every run-control action of issue 7 on the real stack, driven through the ``ekiden`` command.

The stack is ``ekiden.up.Stack``: nats-server, a manager, relay ``main`` with two workers of destination
``cloud``, and the standard agent ``local``, all real processes. Jobs are real shell jobs that leave
evidence in a directory of the test (``Marks``): a ``ran.<attempt>`` file per attempt that executed, and,
for locks and limits, an ``S``/``E`` line with a timestamp as they enter and leave, from which the test
computes how many were inside at once. A job may wait on a gate file that the test creates, so that the
test can look at the stack while work is held inside; nothing is inferred from timing.
"""

import asyncio
import getpass
import os
import re
import shlex
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import orjson
import pytest

from ekiden.client import ApiClient
from ekiden.up import Stack
from engine.states import JobState
from schemas.errors import ErrorCode, WireError
from tests.e2e.test_operate import REPO, ekiden
from tests.e2e.test_operate import stack as stack  # the fixture: one stack per test
from tests.engine.helpers import wait_for_run
from tests.shell import wait_for_file

T = TypeVar("T")
#: Seconds a job waits for its gate before it gives up (exit 9); the test fails long before.
GATE_S = 60


def _documented_job_states() -> set[str]:
    """The job states docs/run-control.md lists for ``jobs[].state`` in ``status --json``."""
    text = (REPO / "docs" / "run-control.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| `jobs[].state` |"))
    return set(re.findall(r"`(\w+)`", row.split(" | ")[1].partition(" (")[0]))


class Marks:
    """A directory where jobs leave evidence of what ran, when, and who was inside at once."""

    def __init__(self, path: Path) -> None:
        """Use (and create) ``path``."""
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def script(self, gate: str = "", fixable: bool = False, exclusive: bool = False, weight: int = 1) -> str:
        """The shell text of a job.

        Args:
            gate: wait for this file (``$r`` is the run's ID) before leaving; '' for no wait.
            fixable: fail (exit 1) until the file ``fixed`` exists.
            exclusive: enter with ``mkdir inside`` and exit 3 if another job is already inside.
            weight: the weight written with the S/E lines.
        """
        lines = [
            f"d={shlex.quote(str(self.path))}",
            'a="$EKIDEN_ATTEMPT_ID"; r="${a#*:}"; r="${r%%:*}"',
            'touch "$d/ran.$a"',
        ]
        if fixable:
            lines.append('[ -e "$d/fixed" ] || { echo "not fixed yet" >&2; exit 1; }')
        if exclusive:
            lines.append('mkdir "$d/inside" 2>/dev/null || { echo "someone is inside" >&2; exit 3; }')
        lines.append(f'echo "S $a {weight} $(date +%s%N)" >> "$d/log"')
        if gate:
            lines.append(wait_for_file(f'"$d/{gate}"', GATE_S))
        if exclusive:
            lines.append("sleep 0.2")
        lines.append(f'echo "E $a {weight} $(date +%s%N)" >> "$d/log"')
        if exclusive:
            lines.append('rmdir "$d/inside"')
        lines.append('echo "done $a"')
        return "\n".join(lines)

    def job(self, job_id: str, target: str, after: tuple[str, ...] = (), **how: Any) -> dict[str, Any]:
        """A job on ``agent:NAME`` or ``dest:NAME`` running ``script(**how)``; ``locks`` and ``sets`` go in as given."""
        extra: dict[str, Any] = {k: how.pop(k) for k in ("locks", "sets") if k in how}
        kind, _, name = target.partition(":")
        job: dict[str, Any] = {"id": job_id, "cmd": self.script(**how), "shell": True, kind: name, **extra}
        if after:
            job["after"] = list(after)
        return job

    def open(self, gate: str) -> None:
        """Create a gate file."""
        (self.path / gate).touch()

    def ran(self, run: str, job: str) -> int:
        """How many attempts of the job executed."""
        return sum(1 for p in self.path.glob("ran.*") if p.name.split(":")[1:3] == [run, job])

    def log(self) -> list[tuple[str, str, int, int]]:
        """The S/E lines in the order written: (kind, attempt, weight, ns)."""
        path = self.path / "log"
        text = path.read_text() if path.exists() else ""
        return [(k, a, int(w), int(ns)) for k, a, w, ns in (line.split() for line in text.splitlines())]

    def inside_now(self) -> int:
        """The weight inside now (entered and not left)."""
        return sum(w if k == "S" else -w for k, _, w, _ in self.log())

    def most_inside(self) -> int:
        """The largest weight that was ever inside at once, by the jobs' own clocks (ends first on a tie)."""
        events = sorted(((ns, k == "S", w) for k, _, w, ns in self.log()), key=lambda e: (e[0], e[1]))
        inside = most = 0
        for _, entered, w in events:
            inside += w if entered else -w
            most = max(most, inside)
        return most


async def _until(what: str, probe: Callable[[], Awaitable[T | None]], timeout_s: float = 30.0) -> T:
    """Poll ``probe`` until it returns something other than None or False."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await probe()
        if found is not None and found is not False:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout_s:g}s: {what}")
        await asyncio.sleep(0.05)


async def _job(client: ApiClient, run: str, job: str) -> dict[str, Any]:
    doc = await client.call("status", run=run)
    found: dict[str, Any] = next(j for j in doc["jobs"] if j["id"] == job)
    return found


async def _job_in(client: ApiClient, run: str, job: str, state: str) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        found = await _job(client, run, job)
        return found if found["state"] == state else None

    return await _until(f"run {run} job {job} {state}", probe)


async def _start(client: ApiClient, jobnet: str, **how: Any) -> str:
    """Start a run with the test's own client (where starting it is not what the test is about)."""
    return str((await client.call("run", jobnet=jobnet, **how))["run"])


async def _probe(client: ApiClient) -> None:
    """Run jobnet ``probe`` (on the same targets) to its end: what was to be dispatched before it has been."""
    assert (await wait_for_run(client, await _start(client, "probe")))["state"] == "succeeded"


async def _started(st: Stack, *args: str) -> str:
    """``ekiden run ... --json`` without waiting; the run's ID."""
    out = await ekiden(st, "run", *args, "--json")
    assert out.returncode == 0, out.stderr
    return str(orjson.loads(out.stdout)["run"])


def _states(doc: dict[str, Any]) -> list[tuple[str, str]]:
    return [(j["id"], j["state"]) for j in doc["jobs"]]


def _argv(st: Stack, *args: str) -> list[str]:
    return [sys.executable, "-m", "ekiden", *args, "--nats", st.endpoint.nats_url, "--site", str(st.site)]


async def _audited(st: Stack, since: float) -> set[tuple[str, str, str]]:
    """``ekiden audit --json``: check that every entry says when (a time of this test), who (this OS user) and
    from where (this host, a PID); return (action, target, ok or refused) of those from an ``ekiden`` command
    (not from this test's own client)."""
    audit = await ekiden(st, "audit", "--json", "--limit", "100")
    assert audit.returncode == 0, audit.stderr
    rows = orjson.loads(audit.stdout)
    assert rows
    for row in rows:
        assert since <= row["ts"] <= time.time(), row
        assert row["who"] == getpass.getuser(), row
        host, _, pid = row["origin"].partition(" pid ")
        assert host == socket.gethostname() and pid.isdigit(), row
    return {
        (r["action"], r["target"], r["outcome"].split(":")[0])
        for r in rows
        if not r["origin"].endswith(f" {os.getpid()}")
    }


def test_the_documented_job_states_are_the_managers() -> None:
    assert _documented_job_states() == {str(s) for s in JobState}


async def test_hold_release_skip_and_kill_a_run_and_its_jobs(stack: tuple[Stack, ApiClient], tmp_path: Path) -> None:
    st, client = stack
    since = time.time()
    marks = Marks(tmp_path / "marks")
    defs = {
        "destination": {"cloud": {"relay": "main"}},
        "jobnet": {
            "held": {"job": [marks.job("h1", "agent:local"), marks.job("h2", "dest:cloud")]},
            "probe": {"job": [marks.job("p1", "agent:local"), marks.job("p2", "dest:cloud")]},
            "chain": {
                "job": [
                    marks.job("a", "agent:local", gate="go.$r"),
                    marks.job("b", "dest:cloud", after=("a",)),
                    marks.job("c", "agent:local", after=("b",)),
                ]
            },
        },
    }
    await client.call("apply", definitions=defs)

    # A run started held runs nothing until it is released.
    held = await _started(st, "held", "--hold")
    assert (await client.call("status", run=held))["held"] is True
    await _probe(client)
    doc = await client.call("status", run=held)
    assert doc["state"] == "running" and doc["held"] is True
    assert {s for _, s in _states(doc)} <= {"waiting", "ready"}
    assert (marks.ran(held, "h1"), marks.ran(held, "h2")) == (0, 0)
    released = await ekiden(st, "release", held)
    assert released.returncode == 0, released.stderr
    assert (await wait_for_run(client, held))["state"] == "succeeded"
    assert (marks.ran(held, "h1"), marks.ran(held, "h2")) == (1, 1)
    again = await ekiden(st, "release", held)
    assert again.returncode == 2
    assert f"run {held} is not held" in again.stderr

    # Hold a waiting job; holding the running one is refused with the reason.
    run = hold_run = await _start(client, "chain")
    await _job_in(client, run, "a", "running")
    refused = await ekiden(st, "hold", run, "a")
    assert refused.returncode == 2
    assert "job a is running: only a waiting or ready job can be held" in refused.stderr
    held_b = await ekiden(st, "hold", run, "b")
    assert held_b.returncode == 0, held_b.stderr
    assert "state held" in held_b.stdout
    marks.open(f"go.{run}")
    await _job_in(client, run, "a", "succeeded")
    await _probe(client)  # b would have been dispatched by now
    doc = await client.call("status", run=run)
    assert doc["state"] == "running"
    assert _states(doc) == [("a", "succeeded"), ("b", "held"), ("c", "waiting")]
    assert marks.ran(run, "b") == 0
    released = await ekiden(st, "release", run, "b")
    assert released.returncode == 0, released.stderr
    doc = await wait_for_run(client, run)
    assert doc["state"] == "succeeded"
    assert (marks.ran(run, "b"), marks.ran(run, "c")) == (1, 1)

    # Hold a running run: what runs goes on, nothing new starts. Skip a job that has not started: the jobs
    # after it run once the run is released; skipping the running one is refused.
    run = skip_run = await _start(client, "chain")
    await _job_in(client, run, "a", "running")
    hold = await ekiden(st, "hold", run)
    assert hold.returncode == 0, hold.stderr
    assert hold.stdout.strip() == f"run {run}: held True"
    again = await ekiden(st, "hold", run)
    assert again.returncode == 2
    assert f"run {run} is already held" in again.stderr
    refused = await ekiden(st, "skip", run, "a")
    assert refused.returncode == 2
    assert "job a is running: kill it first" in refused.stderr
    skipped = await ekiden(st, "skip", run, "b")
    assert skipped.returncode == 0, skipped.stderr
    marks.open(f"go.{run}")
    await _job_in(client, run, "a", "succeeded")
    await _probe(client)  # c would have been dispatched by now
    doc = await client.call("status", run=run)
    assert doc["state"] == "running" and doc["held"] is True
    assert _states(doc) == [("a", "succeeded"), ("b", "skipped"), ("c", "ready")]
    assert marks.ran(run, "c") == 0
    released = await ekiden(st, "release", run)
    assert released.returncode == 0, released.stderr
    doc = await wait_for_run(client, run)
    assert doc["state"] == "succeeded"
    assert _states(doc) == [("a", "succeeded"), ("b", "skipped"), ("c", "succeeded")]
    assert (marks.ran(run, "a"), marks.ran(run, "b"), marks.ran(run, "c")) == (1, 0, 1)

    # Kill a whole run: the running job is killed, the rest skipped, the run ends stopped (--wait exits 3).
    async with asyncio.TaskGroup() as tg:
        waiting = tg.create_task(ekiden(st, "run", "chain", "--wait"))

        async def newer() -> str | None:
            runs = await client.call("runs", jobnet="chain", limit=1)
            return str(runs[0]["run"]) if runs and runs[0]["run"] != skip_run else None

        run = await _until("the killed run started", newer)
        await _job_in(client, run, "a", "running")
        killed = await ekiden(st, "kill", run)
        assert killed.returncode == 0, killed.stderr
        assert "killed 1" in killed.stdout
    assert waiting.result().returncode == 3, waiting.result()
    doc = await wait_for_run(client, run)
    assert doc["state"] == "stopped"
    assert _states(doc) == [("a", "killed"), ("b", "skipped"), ("c", "skipped")]
    assert (marks.ran(run, "b"), marks.ran(run, "c")) == (0, 0)

    seen = await _audited(st, since)
    assert {
        ("run", "held", "ok"),
        ("release", held, "ok"),
        ("release", held, "refused"),
        ("hold", f"{hold_run} job a", "refused"),
        ("hold", skip_run, "ok"),
        ("hold", skip_run, "refused"),
        ("release", skip_run, "ok"),
        ("skip", f"{skip_run} job a", "refused"),
        ("skip", f"{skip_run} job b", "ok"),
        ("kill", run, "ok"),
        ("release", f"{hold_run} job b", "ok"),
        ("hold", f"{hold_run} job b", "ok"),
    } <= seen, seen


async def test_set_status_rerun_only_and_failed_dedupe_audit_and_purge(
    stack: tuple[Stack, ApiClient], tmp_path: Path
) -> None:
    st, client = stack
    since = time.time()
    marks = Marks(tmp_path / "marks")
    defs = {
        "destination": {"cloud": {"relay": "main"}},
        "jobnet": {
            "manual": {
                "job": [
                    {"id": "m1", "cmd": ["false"], "agent": "local"},
                    marks.job("m2", "dest:cloud", after=("m1",)),
                ]
            },
            "fix": {
                "job": [
                    marks.job("a", "agent:local", fixable=True),
                    marks.job("b", "dest:cloud", after=("a",)),
                    marks.job("z", "dest:cloud"),
                ]
            },
            "once": {"job": [marks.job("o", "dest:cloud")]},
            "idle": {"job": [marks.job("i", "agent:local")]},
        },
    }
    await client.call("apply", definitions=defs)

    # set-status on a failed job reopens the run, and the rest runs.
    manual = await _start(client, "manual")
    doc = await wait_for_run(client, manual)
    assert _states(doc) == [("m1", "failed"), ("m2", "skipped")]
    fixed = await ekiden(st, "set-status", manual, "m1", "succeeded")
    assert fixed.returncode == 0, fixed.stderr
    assert "reopened True" in fixed.stdout
    doc = await wait_for_run(client, manual)
    assert doc["state"] == "succeeded"
    assert [(j["id"], j["state"], j["attempts"]) for j in doc["jobs"]] == [
        ("m1", "succeeded", 1),
        ("m2", "succeeded", 1),
    ]
    assert doc["jobs"][0]["reason"] == "set to succeeded by an operator"
    assert marks.ran(manual, "m2") == 1

    # rerun --only runs that job alone (what it comes after is not waited for); --failed leaves successes alone.
    fix = await _start(client, "fix")
    assert _states(await wait_for_run(client, fix)) == [("a", "failed"), ("b", "skipped"), ("z", "succeeded")]
    only = await ekiden(st, "rerun", fix, "--only", "b")
    assert only.returncode == 0, only.stderr
    assert "running again b" in only.stdout
    doc = await wait_for_run(client, fix)
    assert doc["state"] == "failed"
    assert [(j["id"], j["state"], j["attempts"]) for j in doc["jobs"]] == [
        ("a", "failed", 1),
        ("b", "succeeded", 1),
        ("z", "succeeded", 1),
    ]
    marks.open("fixed")
    rerun = await ekiden(st, "rerun", fix, "--failed")
    assert rerun.returncode == 0, rerun.stderr
    assert rerun.stdout.strip() == f"run {fix}: running again a"
    doc = await wait_for_run(client, fix)
    assert doc["state"] == "succeeded"
    assert [(j["id"], j["state"], j["attempts"]) for j in doc["jobs"]] == [
        ("a", "succeeded", 2),
        ("b", "succeeded", 1),
        ("z", "succeeded", 1),
    ]
    assert [marks.ran(fix, j) for j in ("a", "b", "z")] == [2, 1, 1]
    nothing = await ekiden(st, "rerun", fix, "--failed")
    assert nothing.returncode == 2
    assert "nothing to rerun, every job succeeded" in nothing.stderr
    idle = await _start(client, "idle", hold=True)
    busy = await ekiden(st, "rerun", idle)
    assert busy.returncode == 2
    assert f"run {idle} is still running: rerun it once it has ended" in busy.stderr

    # The same dedupe key twice: one run, its job ran once.
    first = await ekiden(st, "run", "once", "--dedupe", "nightly-2026-11-22", "--wait", "--json")
    assert first.returncode == 0, first.stderr
    once = orjson.loads(first.stdout)["run"]
    second = await ekiden(st, "run", "once", "--dedupe", "nightly-2026-11-22")
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip() == f"run {once} of once already started (same dedupe key)"
    assert [r["run"] for r in await client.call("runs", jobnet="once", limit=10)] == [once]
    assert marks.ran(once, "o") == 1
    assert (await client.call("status", run=once))["dedupe_key"] == "nightly-2026-11-22"

    seen = await _audited(st, since)
    assert {
        ("set_status", f"{manual} job m1", "ok"),
        ("rerun", f"{fix} job b", "ok"),
        ("rerun", fix, "ok"),
        ("rerun", fix, "refused"),
        ("rerun", idle, "refused"),
        ("run", "once", "ok"),
    } <= seen, seen

    # purge: an age that nothing is older than forgets nothing; 0s forgets every finished run, not the held one.
    runs = {r["run"] for r in await client.call("runs", limit=50)}
    assert runs == {manual, fix, once, idle}
    kept = await ekiden(st, "purge", "--older-than", "30d")
    assert kept.returncode == 0, kept.stderr
    assert {r["run"] for r in await client.call("runs", limit=50)} == runs
    purged = await ekiden(st, "purge", "--older-than", "0s")
    assert purged.returncode == 0, purged.stderr
    assert [r["run"] for r in await client.call("runs", limit=50)] == [idle]
    with pytest.raises(WireError) as gone:
        await client.call("logs", run=fix, job="a")
    assert gone.value.code == ErrorCode.NOT_FOUND
    table = await ekiden(st, "audit")  # the audit entries went too, but for the purge itself
    assert table.returncode == 0, table.stderr
    head, *rows = table.stdout.splitlines()
    assert head.split() == ["WHEN", "WHO", "FROM", "ACTION", "TARGET", "OUTCOME"]
    assert len(rows) == 1, rows
    _, who, host, _, pid, action, outcome = rows[0].split()
    assert (who, host, action, outcome) == (getpass.getuser(), socket.gethostname(), "purge", "ok")
    assert pid.isdigit() and int(pid) != os.getpid()


async def test_status_json_run_follow_and_status_watch(stack: tuple[Stack, ApiClient], tmp_path: Path) -> None:
    st, client = stack
    marks = Marks(tmp_path / "marks")
    count = marks.job("count", "agent:local", sets=["ROWS"])
    count["cmd"] += '\necho "::ekiden-var ROWS=42"\necho "counted" >&2'
    defs: dict[str, Any] = {
        "destination": {"cloud": {"relay": "main"}},
        "jobnet": {
            "show": {
                "params": {"DATE": "today"},
                "job": [count, marks.job("load", "dest:cloud", after=("count",), gate="go.$r")],
            }
        },
    }
    await client.call("apply", definitions=defs)

    run = await _started(st, "show", "-p", "DATE=2026-11-22")
    watch = await asyncio.create_subprocess_exec(
        *_argv(st, "status", run, "--watch"), cwd=REPO, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    assert watch.stdout is not None
    async with asyncio.timeout(60):
        head = await watch.stdout.readline()
        await _job_in(client, run, "load", "running")
        going = await ekiden(st, "status", run, "--json")
        marks.open(f"go.{run}")
        watched, err = await watch.communicate()
    assert watch.returncode == 0, err

    # While running: the run and the running job have no end yet.
    assert going.returncode == 0, going.stderr
    doc = orjson.loads(going.stdout)
    assert doc["state"] == "running" and doc["ended_at"] is None
    assert {j["state"] for j in doc["jobs"]} <= _documented_job_states()
    load = doc["jobs"][1]
    assert load["state"] == "running" and load["ended_at"] is None and load["exit_code"] is None
    assert isinstance(load["started_at"], float) and load["target"] == "dest:cloud"

    # Piped, --watch prints plain lines, ending with the run's end.
    text = (head + watched).decode()
    assert "\x1b" not in text
    lines = text.splitlines()
    assert lines[0].endswith(f"run {run} of show v1: 2 jobs")
    assert re.search(r"\[2/2\] load +succeeded$", lines[-2]), lines
    assert re.search(rf"run {run} succeeded in [0-9.]+s$", lines[-1]), lines

    # Every documented field, with its documented type.
    shown = await ekiden(st, "status", run, "--json")
    assert shown.returncode == 0, shown.stderr
    doc = orjson.loads(shown.stdout)
    assert doc["run"] == run and run.isdigit()
    assert (doc["jobnet"], doc["version"], doc["state"], doc["tenant"]) == ("show", 1, "succeeded", "default")
    assert doc["params"] == {"DATE": "2026-11-22"}
    assert isinstance(doc["created_at"], float) and isinstance(doc["ended_at"], float)
    assert doc["created_at"] <= doc["ended_at"] <= time.time()
    assert doc["held"] is False and doc["dedupe_key"] is None
    assert doc["variables"] == {"DATE": "2026-11-22", "ROWS": "42"}
    fields = {"id", "state", "exit_code", "attempts", "attempt_id", "target", "host", "started_at", "ended_at"}
    fields |= {"reason", "output_tail", "variables"}
    for job in doc["jobs"]:
        assert fields <= set(job), job
        assert job["state"] == "succeeded"
        assert job["exit_code"] == 0 and job["attempts"] == 1
        assert job["attempt_id"] == f"{st.server_id}:{run}:{job['id']}:1"
        assert isinstance(job["host"], str) and job["host"]
        assert isinstance(job["started_at"], float) and isinstance(job["ended_at"], float)
        assert doc["created_at"] <= job["started_at"] <= job["ended_at"] <= doc["ended_at"]
        assert job["reason"] == ""
        assert set(job["output_tail"]) == {"stdout", "stderr"}
        assert job["output_tail"]["stdout"].endswith(f"done {job['attempt_id']}\n" if job["id"] == "load" else "=42\n")
    count_doc, load_doc = doc["jobs"]
    assert (count_doc["target"], load_doc["target"]) == ("agent:local", "dest:cloud")
    assert count_doc["output_tail"]["stderr"] == "counted\n"
    assert (count_doc["variables"], load_doc["variables"]) == ({"ROWS": "42"}, {})

    # run --follow, piped: plain lines, one per job state change, ending with the run's end.
    marks.open("go.all")
    defs["jobnet"]["show"]["job"][1] = marks.job("load", "dest:cloud", after=("count",), gate="go.all")
    await client.call("apply", definitions=defs)
    followed = await ekiden(st, "run", "show", "--follow")
    assert followed.returncode == 0, followed.stderr
    assert "\x1b" not in followed.stdout
    lines = followed.stdout.splitlines()
    second = re.search(r"run (\d+) of show v2: 2 jobs$", lines[0])
    assert second is not None, lines
    assert any(re.search(r"\[1/2\] count +succeeded$", line) for line in lines), lines
    assert re.search(r"\[2/2\] load +succeeded$", lines[-2]), lines
    assert re.search(rf"run {second.group(1)} succeeded in [0-9.]+s$", lines[-1]), lines


async def test_locks_contended_by_jobnets_exclusive_and_shared(stack: tuple[Stack, ApiClient], tmp_path: Path) -> None:
    st, client = stack
    db, tape = Marks(tmp_path / "db"), Marks(tmp_path / "tape")
    defs = {
        "destination": {"cloud": {"relay": "main"}},
        "lock": {"db": {}, "tape": {"capacity": 3}},
        "jobnet": {
            "one": {"job": [db.job("work", "agent:local", gate="go", exclusive=True, locks=["db"])]},
            "two": {
                "job": [
                    db.job(f"w{i}", target, exclusive=True, locks=["db"])
                    for i, target in enumerate(("agent:local", "dest:cloud", "dest:cloud"), 1)
                ]
            },
            # The whole block holds db: nobody gets in between its two jobs.
            "blk": {
                "locks": ["db"],
                "job": [
                    db.job("b1", "dest:cloud", exclusive=True),
                    db.job("b2", "agent:local", after=("b1",), exclusive=True),
                ],
            },
            "hog": {"job": [db.job("hog", "dest:cloud", gate="never", locks=["db"])]},
            "share": {
                "job": [
                    tape.job("h", "agent:local", gate="go", weight=2, locks=[{"name": "tape", "weight": 2}]),
                    *(tape.job(f"l{i}", t, gate="go", locks=["tape"]) for i, t in enumerate(("dest:cloud",) * 3, 1)),
                ]
            },
        },
    }
    await client.call("apply", definitions=defs)

    one = await _start(client, "one")
    await _until("one's job inside", lambda: asyncio.to_thread(lambda: db.inside_now() == 1))
    two, blk = await _start(client, "two"), await _start(client, "blk")
    waiters = {f"{two}:w1", f"{two}:w2", f"{two}:w3", f"{blk}:b1"}

    async def contended() -> bool:
        return set((await client.call("locks"))[0]["waiters"]) == waiters

    await _until("every other job waits for db", contended)
    listed = await ekiden(st, "ls", "locks", "--json")
    assert listed.returncode == 0, listed.stderr
    locks = {r["name"]: r for r in orjson.loads(listed.stdout)}
    assert locks["db"]["capacity"] == 1
    assert locks["db"]["holders"] == [{"holder": f"{one}:work", "weight": 1}]
    assert set(locks["db"]["waiters"]) == waiters
    table = await ekiden(st, "ls", "locks")
    assert table.returncode == 0, table.stderr
    row = next(line.split(maxsplit=3) for line in table.stdout.splitlines() if line.startswith("db "))
    assert row[:3] == ["db", "1/1", f"{one}:work"] and f"{two}:w1" in row[3] and f"{blk}:b1" in row[3]
    assert (await _job(client, two, "w1"))["reason"] == f"waiting for lock db (1/1 held by {one}:work)"
    db.open("go")
    for run in (one, two, blk):
        assert (await wait_for_run(client, run))["state"] == "succeeded", await client.call("status", run=run)
    entries = db.log()
    assert [k for k, *_ in entries] == ["S", "E"] * 6, entries  # never two inside (and none exited 3)
    assert all(s[1] == e[1] for s, e in zip(entries[::2], entries[1::2], strict=True))
    order = [a.split(":")[2] for _, a, *_ in entries[::2]]
    assert order.index("b2") == order.index("b1") + 1, order
    assert db.most_inside() == 1
    assert all(r["holders"] == [] for r in await client.call("locks"))

    # A killed holder (on a worker behind the relay) gives its lock back.
    hog = await _start(client, "hog")
    await _job_in(client, hog, "hog", "running")
    assert (await client.call("locks"))[0]["holders"] == [{"holder": f"{hog}:hog", "weight": 1}]
    killed = await ekiden(st, "kill", hog, "hog")
    assert killed.returncode == 0, killed.stderr
    assert _states(await wait_for_run(client, hog)) == [("hog", "killed")]
    assert all(r["holders"] == [] for r in await client.call("locks"))

    # Shared up to its capacity by weight: 3 of tape are taken while the rest wait.
    share = await _start(client, "share")
    await _until("tape full", lambda: asyncio.to_thread(lambda: tape.inside_now() == 3))

    async def full() -> bool:
        tape_lock = (await client.call("locks"))[1]
        return sum(h["weight"] for h in tape_lock["holders"]) == 3 and bool(tape_lock["waiters"])

    await _until("the rest wait for tape", full)
    listed = await ekiden(st, "ls", "locks", "--json")
    tape_lock = {r["name"]: r for r in orjson.loads(listed.stdout)}["tape"]
    assert tape_lock["capacity"] == 3
    assert sum(h["weight"] for h in tape_lock["holders"]) == 3
    assert len(tape_lock["holders"]) + len(tape_lock["waiters"]) == 4
    assert tape.inside_now() == 3
    tape.open("go")
    assert (await wait_for_run(client, share))["state"] == "succeeded"
    assert tape.most_inside() == 3
    assert all(r["holders"] == [] for r in await client.call("locks"))


async def _at_limit(client: ApiClient, marks: Marks, runs: list[str], limit: int, reason: str) -> None:
    """Wait until ``limit`` jobs are inside and every other job of the runs waits for the limit."""
    await _until(f"{limit} inside", lambda: asyncio.to_thread(lambda: marks.inside_now() == limit))

    async def waiting() -> bool:
        jobs = [j for run in runs for j in (await client.call("status", run=run))["jobs"]]
        outside = [j for j in jobs if j["state"] not in ("dispatched", "running")]
        return len(jobs) - len(outside) == limit and all(j["reason"] == reason for j in outside)

    await _until(f"the other jobs wait: {reason}", waiting)
    assert marks.inside_now() == limit


async def test_limits_per_destination_agent_and_jobnet(stack: tuple[Stack, ApiClient], tmp_path: Path) -> None:
    st, client = stack
    dest, agent, net = Marks(tmp_path / "dest"), Marks(tmp_path / "agent"), Marks(tmp_path / "net")
    defs: dict[str, Any] = {
        "destination": {"cloud": {"relay": "main", "max_running": 2}},
        "agent": {"local": {"max_running": 2}},
        "jobnet": {
            "dlim": {"job": [dest.job(f"d{i}", "dest:cloud", gate="go") for i in range(4)]},
            "alim": {"job": [agent.job(f"a{i}", "agent:local", gate="go") for i in range(4)]},
        },
    }
    await client.call("apply", definitions=defs)
    dlim, alim = await _start(client, "dlim"), await _start(client, "alim")
    await _at_limit(client, dest, [dlim], 2, "dest cloud is at its limit of 2 running jobs")
    await _at_limit(client, agent, [alim], 2, "agent local is at its limit of 2 running jobs")
    shown = await ekiden(st, "status", dlim)
    assert shown.returncode == 0, shown.stderr
    assert "dest cloud is at its limit of 2 running jobs" in shown.stdout
    dest.open("go")
    agent.open("go")
    for run in (dlim, alim):
        assert (await wait_for_run(client, run))["state"] == "succeeded"
    assert (dest.most_inside(), agent.most_inside()) == (2, 2)
    assert len(dest.log()) == len(agent.log()) == 8

    # Per jobnet, across its runs and its targets (the destination and agent limits lifted).
    defs = {
        "destination": {"cloud": {"relay": "main"}},
        "agent": {"local": {}},
        "jobnet": {
            "nlim": {
                "max_running": 2,
                "job": [
                    net.job(f"n{i}", t, gate="go") for i, t in enumerate(("dest:cloud", "agent:local", "dest:cloud"))
                ],
            }
        },
    }
    await client.call("apply", definitions=defs)
    runs = [await _start(client, "nlim"), await _start(client, "nlim")]
    await _at_limit(client, net, runs, 2, "jobnet nlim is at its limit of 2 running jobs")
    net.open("go")
    for run in runs:
        assert (await wait_for_run(client, run))["state"] == "succeeded"
    assert net.most_inside() == 2
    assert len(net.log()) == 12
