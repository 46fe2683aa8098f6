"""``ekiden logs RUN JOB --follow``: a running job's output as it comes, then its end.

Live output is best effort (it goes over plain NATS, and only for jobs that outlive the executor's short
start delay); the output kept with the job's result is what ``ekiden logs`` prints once it ended. A job
that ended before anything was streamed has that kept output printed instead.
"""

import asyncio
import sys
from typing import Any

from ekiden.client import ApiClient
from schemas import subjects
from schemas.codec import decode
from schemas.errors import ErrorCode, WireError
from schemas.messages import Kind

#: Job states after which nothing more comes.
FINAL_JOB_STATES = frozenset({"succeeded", "warning", "failed", "timed_out", "killed", "skipped", "lost"})
#: Seconds between looks at the job's state (its end, or a new attempt to follow).
CHECK_S = 1.0


async def follow_logs(client: ApiClient, run: str, job: str) -> dict[str, Any]:
    """Print the job's live output until it ends; return its final state in the run."""
    streamed = False
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
            streamed = await _drain(sub, CHECK_S) or streamed
        if sub is not None:
            streamed = await _drain(sub, 0.3) or streamed  # what was published just before the end
    finally:
        if sub is not None:
            await sub.unsubscribe()
    if not streamed:
        kept = await client.call("logs", run=run, job=job)
        _write(sys.stdout, kept["stdout"])
        _write(sys.stderr, kept["stderr"])
    return dict(found)


async def _drain(sub: Any, wait_s: float) -> bool:
    """Print what arrives on ``sub`` for up to ``wait_s`` seconds; tell whether anything did."""
    if sub is None:
        await asyncio.sleep(wait_s)
        return False
    got = False
    loop = asyncio.get_running_loop()
    deadline = loop.time() + wait_s
    while (left := deadline - loop.time()) > 0:
        try:
            msg = await sub.next_msg(timeout=left)
        except TimeoutError:
            break
        try:
            envelopes = decode(msg.data)
        except WireError:
            continue
        for env in envelopes:
            if env.kind != Kind.OUTPUT:
                continue
            data, dropped = env.payload.get("data"), env.payload.get("dropped", 0)
            if isinstance(dropped, int) and dropped > 0:
                print(f"[ekiden: {dropped} bytes of live output dropped]", file=sys.stderr, flush=True)
            if isinstance(data, bytes):
                _write(sys.stderr if env.payload.get("stream") == "stderr" else sys.stdout, data)
                got = True
    return got


def _write(stream: Any, data: bytes) -> None:
    stream.buffer.write(data)
    stream.flush()
