"""Live progress of a run: a line per job state change, from the manager's committed updates."""

import time
from typing import Any, TextIO

from ekiden.client import ApiClient
from schemas import subjects
from schemas.codec import decode
from schemas.errors import WireError

#: Run states that end a run.
FINAL_RUN_STATES = frozenset({"succeeded", "failed", "stopped"})
#: Job states that are final for progress counting.
FINAL_JOB_STATES = frozenset({"succeeded", "failed", "timed_out", "killed", "skipped", "lost"})
#: Seconds without an update after which the follower asks for the whole status again.
REFRESH_S = 3.0


class RunFollower:
    """Prints what changes in one run until it ends."""

    def __init__(self, client: ApiClient, run_id: str, out: TextIO) -> None:
        self._client = client
        self._run_id = run_id
        self._out = out
        self._jobs: dict[str, str] = {}
        self._t0 = time.monotonic()
        self._total = 0

    async def follow(self) -> dict[str, Any]:
        """Follow the run to its end and return its final status document."""
        subject = subjects.run_updates(self._client.server_id, self._run_id, self._client.tenant)
        sub = await self._client.nc.subscribe(subject)
        try:
            doc = await self._client.call("status", run=self._run_id)
            self._total = len(doc["jobs"])
            self._line(f"run {doc['run']} of {doc['jobnet']} v{doc['version']}: {self._total} jobs")
            self._take(doc["jobs"])
            state = doc["state"]
            while state not in FINAL_RUN_STATES:
                try:
                    msg = await sub.next_msg(timeout=REFRESH_S)
                except TimeoutError:
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
        self._line(f"run {doc['run']} {doc['state']} in {time.monotonic() - self._t0:.2f}s")
        return dict(doc)

    def _take(self, jobs: list[dict[str, Any]]) -> None:
        for job in jobs:
            state = job.get("state")
            if not isinstance(state, str) or self._jobs.get(job["id"]) == state:
                continue
            first = job["id"] not in self._jobs
            self._jobs[job["id"]] = state
            if first and state == "waiting":
                continue
            done = sum(1 for s in self._jobs.values() if s in FINAL_JOB_STATES)
            extra = ""
            if job.get("exit_code") is not None and state != "succeeded":
                extra = f" exit {job['exit_code']}"
            if job.get("reason"):
                extra += f" ({job['reason']})"
            self._line(f"[{done}/{self._total}] {job['id']:<24} {state}{extra}")

    def _line(self, text: str) -> None:
        self._out.write(f"{time.monotonic() - self._t0:7.2f}s  {text}\n")
        self._out.flush()
