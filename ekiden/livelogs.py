"""``ekiden logs RUN JOB --follow``: a running job's output so far, then as it comes, then its end.

When it attaches to an attempt, the follower asks the manager to have the attempt's executor publish what
the job wrote so far (its head and tail when long), then prints the live pieces after it. Every piece
carries its byte offset in its stream, so what arrives twice is printed once and what never arrives is
shown as a count of missing bytes. Live output is best effort (plain NATS); the output kept with the
job's result is what ``ekiden logs`` prints once it ended. A job that ended before anything was shown
has that kept output printed instead.
"""

import asyncio
import sys
from typing import Any, TextIO

from ekiden.client import ApiClient
from schemas import subjects
from schemas.codec import decode
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, Kind

#: Job states after which nothing more comes.
FINAL_JOB_STATES = frozenset({"succeeded", "warning", "failed", "timed_out", "killed", "skipped", "lost"})
#: Seconds between looks at the job's state (its end, or a new attempt to follow).
CHECK_S = 1.0
#: Seconds to wait for an executor's replay of the output so far before printing live pieces without it.
REPLAY_WAIT_S = 3.0
#: Seconds to wait, once the job ended, for its last live pieces.
LAST_PIECES_S = 0.3


class Printer:
    """Prints pieces of an attempt's streams in order, once each, marking bytes that never came."""

    def __init__(self) -> None:
        self._next: dict[str, int] = {}
        #: bytes printed in all
        self.shown = 0

    def restart(self) -> None:
        """A new attempt: its streams start from the beginning."""
        self._next = {}

    def piece(self, env: Envelope) -> None:
        """Print what a live output envelope adds to its stream."""
        stream, data, offset = env.payload.get("stream"), env.payload.get("data"), env.payload.get("offset")
        if stream not in ("stdout", "stderr") or not isinstance(data, bytes):
            return
        at = self._next.get(stream, 0)
        if not isinstance(offset, int) or offset < 0:
            offset = at  # an executor that does not number its pieces: take them as they come
        end = offset + len(data)
        if end <= at:
            return
        if offset > at:
            print(f"[ekiden: {offset - at} bytes of {stream} not shown]", file=sys.stderr, flush=True)
        fresh = data[max(0, at - offset) :]
        _write(sys.stderr if stream == "stderr" else sys.stdout, fresh)
        self._next[stream] = end
        self.shown += len(fresh)


async def follow_logs(client: ApiClient, run: str, job: str) -> dict[str, Any]:
    """Print the job's output so far and as it comes until it ends; return its final state in the run."""
    printer = Printer()
    followed: str | None = None
    sub = None
    try:
        while True:
            doc = await client.call("status", run=run)
            found = next((j for j in doc["jobs"] if j["id"] == job), None)
            if found is None:
                raise WireError(ErrorCode.NOT_FOUND, f"run {run} has no job {job!r}")
            if found["state"] in FINAL_JOB_STATES:
                break
            attempt = found.get("attempt_id")
            if attempt and attempt != followed:
                if sub is not None:
                    await sub.unsubscribe()
                sub = await client.nc.subscribe(subjects.output(client.server_id, doc["tenant"], attempt))
                followed = attempt
                printer.restart()
                await _catch_up(client, sub, printer, run, job)
            await _drain(sub, printer, CHECK_S)
        if sub is not None:
            await _drain(sub, printer, LAST_PIECES_S)
    finally:
        if sub is not None:
            await sub.unsubscribe()
    if not printer.shown:
        kept = await client.call("logs", run=run, job=job)
        _write(sys.stdout, kept["stdout"])
        _write(sys.stderr, kept["stderr"])
    return dict(found)


async def _catch_up(client: ApiClient, sub: Any, printer: Printer, run: str, job: str) -> None:
    """Ask for the output so far and print it, then the live pieces that came meanwhile."""
    try:
        asked = await client.call("live", run=run, job=job)
    except WireError as exc:
        if exc.code != ErrorCode.NOT_FOUND:  # NOT_FOUND: it ended meanwhile, its kept output follows
            raise
        return
    if not asked["attempts"]:
        return  # nothing of it runs yet
    early: list[Envelope] = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + REPLAY_WAIT_S
    while (left := deadline - loop.time()) > 0:
        envs = await _next_pieces(sub, left)
        if envs is None:
            break
        if any(env.payload.get("replay") for env in envs):
            for env in envs:
                printer.piece(env)
            break
        early.extend(envs)
    for env in early:
        printer.piece(env)


async def _drain(sub: Any, printer: Printer, wait_s: float) -> None:
    """Print what arrives on ``sub`` for up to ``wait_s`` seconds."""
    if sub is None:
        await asyncio.sleep(wait_s)
        return
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (left := deadline - loop.time()) > 0:
        envs = await _next_pieces(sub, left)
        if envs is None:
            return
        for env in envs:
            printer.piece(env)


async def _next_pieces(sub: Any, wait_s: float) -> list[Envelope] | None:
    """The live output envelopes of the next message on ``sub`` (None: nothing came within ``wait_s``)."""
    try:
        msg = await sub.next_msg(timeout=wait_s)
    except TimeoutError:
        return None
    try:
        return [env for env in decode(msg.data) if env.kind == Kind.OUTPUT]
    except WireError:
        return []


def _write(stream: TextIO, data: bytes) -> None:
    stream.buffer.write(data)
    stream.flush()
