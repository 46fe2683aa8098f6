"""Live progress of a run, from the manager's committed updates.

On a terminal the view is redrawn in place (jobs done of total, the running ones with their elapsed
time, the latest ends); piped, it prints one plain line per job state change.
"""

import shutil
import time
from typing import Any, TextIO

from ekiden.client import ApiClient
from schemas import subjects
from schemas.codec import decode
from schemas.errors import WireError

#: Run states that end a run.
FINAL_RUN_STATES = frozenset({"succeeded", "failed", "stopped"})
#: Job states that are final for progress counting.
FINAL_JOB_STATES = frozenset({"succeeded", "warning", "failed", "timed_out", "killed", "skipped", "lost"})
#: Seconds without an update after which the follower asks for the whole status again.
REFRESH_S = 3.0
#: Seconds between redraws of the terminal view (elapsed times move on without updates).
REDRAW_S = 0.5
#: Latest job ends the terminal view shows.
RECENT = 8


class RunFollower:
    """Prints what changes in one run until it ends."""

    def __init__(self, client: ApiClient, run_id: str, out: TextIO, screen: bool = False) -> None:
        """Follow one run.

        Args:
            client: a connected API client.
            run_id: the run.
            out: where to write.
            screen: redraw a live view in place (a terminal) instead of printing lines.
        """
        self._client = client
        self._run_id = run_id
        self._out = out
        self._screen = screen
        self._jobs: dict[str, str] = {}
        self._running_since: dict[str, float] = {}
        self._recent: list[str] = []
        self._head = ""
        self._t0 = time.monotonic()
        self._total = 0
        self._drawn_at = 0.0

    async def follow(self) -> dict[str, Any]:
        """Follow the run to its end and return its final status document."""
        subject = subjects.run_updates(self._client.server_id, self._run_id, self._client.tenant)
        sub = await self._client.nc.subscribe(subject)
        try:
            doc = await self._client.call("status", run=self._run_id)
            self._total = len(doc["jobs"])
            self._head = f"run {doc['run']} of {doc['jobnet']} v{doc['version']}"
            self._line(f"{self._head}: {self._total} jobs")
            self._take(doc["jobs"])
            state = doc["state"]
            quiet_s = 0.0
            while state not in FINAL_RUN_STATES:
                self._draw(state)
                try:
                    msg = await sub.next_msg(timeout=REDRAW_S if self._screen else REFRESH_S)
                    quiet_s = 0.0
                except TimeoutError:
                    quiet_s += REDRAW_S if self._screen else REFRESH_S
                    if quiet_s < REFRESH_S:
                        continue
                    quiet_s = 0.0
                    doc = await self._client.call("status", run=self._run_id)
                    self._take(doc["jobs"])
                    state = doc["state"]
                    continue
                try:
                    envs = decode(msg.data)
                except WireError:
                    continue
                for env in envs:
                    self._take(env.payload.get("jobs", []))
                    state = env.payload.get("state", state)
        finally:
            await sub.unsubscribe()
        doc = await self._client.call("status", run=self._run_id)
        self._take(doc["jobs"])
        self._draw(doc["state"], force=True)
        self._screen = False  # the last line is printed under the view
        self._line(f"run {doc['run']} {doc['state']} in {time.monotonic() - self._t0:.2f}s")
        return dict(doc)

    def _take(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            state = job.get("state")
            if not isinstance(state, str) or self._jobs.get(job["id"]) == state:
                continue
            first = job["id"] not in self._jobs
            self._jobs[job["id"]] = state
            if state == "running":
                self._running_since.setdefault(job["id"], time.monotonic())
            else:
                self._running_since.pop(job["id"], None)
            if first and state == "waiting":
                continue
            done = sum(1 for s in self._jobs.values() if s in FINAL_JOB_STATES)
            extra = ""
            if job.get("exit_code") is not None and state != "succeeded":
                extra = f" exit {job['exit_code']}"
            if job.get("reason"):
                extra += f" ({job['reason']})"
            if self._screen:
                if state in FINAL_JOB_STATES:
                    self._recent = [f"{job['id']:<24} {state}{extra}", *self._recent][:RECENT]
            else:
                self._line(f"[{done}/{self._total}] {job['id']:<24} {state}{extra}")

    def _line(self, text: str) -> None:
        if self._screen:
            return
        self._out.write(f"{time.monotonic() - self._t0:7.2f}s  {text}\n")
        self._out.flush()

    def _draw(self, state: str, force: bool = False) -> None:
        """Redraw the terminal view (at most every REDRAW_S unless forced)."""
        now = time.monotonic()
        if not self._screen or (not force and now - self._drawn_at < REDRAW_S / 2):
            return
        self._drawn_at = now
        done = sum(1 for s in self._jobs.values() if s in FINAL_JOB_STATES)
        bad = sum(1 for s in self._jobs.values() if s in FINAL_JOB_STATES and s not in ("succeeded", "skipped"))
        rows = max(shutil.get_terminal_size((100, 30)).lines - RECENT - 6, 3)
        running = sorted(self._running_since.items(), key=lambda kv: kv[1])
        lines = [
            f"{self._head}  {state}  {done}/{self._total} done"
            + (f", {bad} not succeeded" if bad else "")
            + f"  {now - self._t0:.1f}s",
            "",
            f"running ({len(running)}):",
            *(f"  {job:<24} {now - since:7.1f}s" for job, since in running[:rows]),
            *([f"  ... and {len(running) - rows} more"] if len(running) > rows else []),
            "",
            "latest:",
            *(f"  {line}" for line in self._recent),
        ]
        self._out.write("\x1b[H\x1b[2J" + "\n".join(lines) + "\n")
        self._out.flush()
