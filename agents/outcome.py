"""How one run ended, and the race between a run, its timeout and a kill request."""

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

from schemas.messages import JobStatus

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Outcome:
    """What an executor learned about one run, before it is stamped with attempt, host and duration."""

    status: JobStatus
    exit_code: int | None
    stdout: bytes = b""
    stderr: bytes = b""
    truncated_bytes: int = 0
    reason: str = ""

    @classmethod
    def error(cls, reason: str) -> "Outcome":
        """An attempt that could not start."""
        return cls(JobStatus.ERROR, None, reason=reason)


class Interrupted(Exception):
    """The run was stopped before it ended by itself: ``status`` is TIMED_OUT or KILLED."""

    def __init__(self, status: JobStatus) -> None:
        self.status = status
        super().__init__(str(status))


async def race(work: Coroutine[Any, Any, T], kill: asyncio.Event, timeout_s: float | None) -> T:
    """Await ``work`` unless ``kill`` is set or ``timeout_s`` passes first; then ``work`` is cancelled.

    ``work`` must not raise (turn failures into values inside it): its result is what this returns.

    Raises:
        Interrupted: with KILLED when ``kill`` was set first, TIMED_OUT when the time ran out.
    """
    async with asyncio.TaskGroup() as tg:
        task = tg.create_task(work)
        killed = tg.create_task(kill.wait())
        done, _ = await asyncio.wait((task, killed), timeout=timeout_s, return_when=asyncio.FIRST_COMPLETED)
        killed.cancel()
        if task in done:  # finishing wins a tie with a kill
            return task.result()
        task.cancel()
    raise Interrupted(JobStatus.KILLED if killed in done else JobStatus.TIMED_OUT)
