"""The attempts a process holds: slots, the kill switch of each, a memory of recent IDs, and the drain."""

import asyncio
import logging
import re
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from schemas.messages import Envelope, JobSpec, Kind

logger = logging.getLogger(__name__)

#: Characters an attempt ID may hold: it becomes a token of the control subject, so no '.', '*', '>' or space.
_ATTEMPT_ID_RE = re.compile(r"[A-Za-z0-9_:\-]{1,255}")


def parse_dispatch(env: Envelope) -> JobSpec:
    """The job spec a dispatch envelope carries.

    Raises:
        ValueError: the envelope is not a dispatch, or its spec is malformed.
    """
    if env.kind != Kind.DISPATCH:
        raise ValueError(f"expected a dispatch envelope, got {env.kind}")
    spec = JobSpec.from_wire(env.payload)
    if not _ATTEMPT_ID_RE.fullmatch(spec.attempt_id):
        raise ValueError(f"attempt_id {spec.attempt_id!r} cannot name a subject")
    return spec


@dataclass(eq=False)
class Attempt:
    """One attempt this process runs."""

    dispatch: Envelope
    spec: JobSpec
    #: Set to stop the job; it then finishes KILLED.
    kill: asyncio.Event = field(default_factory=asyncio.Event)
    #: Why this process stopped the attempt itself (shutting down); empty when killed on request.
    stop_reason: str = ""

    @property
    def attempt_id(self) -> str:
        """The attempt's ID."""
        return self.spec.attempt_id

    def stop(self, reason: str) -> None:
        """Kill the job because this process is going away."""
        self.stop_reason = reason
        self.kill.set()


class RecentIds:
    """A bounded memory of attempt IDs, oldest forgotten first (dedupe of redelivered dispatches)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._ids: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, attempt_id: object) -> bool:
        return attempt_id in self._ids

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, attempt_id: str) -> None:
        """Remember an ID (again: it becomes the newest)."""
        self._ids[attempt_id] = None
        self._ids.move_to_end(attempt_id)
        while len(self._ids) > self._capacity:
            self._ids.popitem(last=False)


class Attempts:
    """Slots and the attempts that hold them.

    A slot is taken before an attempt's ID is known (a worker fetches first and decodes after), so slots
    are counted apart from the attempts that are registered for control.
    """

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.busy = 0
        self.held: dict[str, Attempt] = {}
        #: ``time.monotonic()`` when the last slot was freed (or when this table was made).
        self.idle_since = time.monotonic()
        self._changed = asyncio.Event()

    @property
    def free(self) -> int:
        """Slots free now."""
        return self.capacity - self.busy

    def take(self, over: bool = False) -> None:
        """Take a slot; with ``over``, even when none is free (for a job that was already delivered).

        Raises:
            RuntimeError: none is free and ``over`` is not set (a caller's bug).
        """
        if self.busy >= self.capacity and not over:
            raise RuntimeError("no free slot")
        self.busy += 1
        self._changed.set()

    def give(self) -> None:
        """Free a slot."""
        self.busy -= 1
        if self.busy == 0:
            self.idle_since = time.monotonic()
        self._changed.set()

    async def wait_free(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for a free slot; tell whether there is one."""
        return await self._wait(lambda: self.busy < self.capacity, timeout_s)

    async def wait_idle(self, timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for every slot to be free; tell whether they are."""
        return await self._wait(lambda: self.busy == 0, timeout_s)

    async def _wait(self, ready: Callable[[], bool], timeout_s: float) -> bool:
        try:
            async with asyncio.timeout(timeout_s):
                # Single-threaded: nothing can change between the check and the wait.
                while not ready():
                    self._changed.clear()
                    await self._changed.wait()
        except TimeoutError:
            pass
        return ready()

    async def drain(self, grace_s: float, reason: str) -> int:
        """Let running attempts finish within ``grace_s``, then stop the rest with ``reason``.

        Returns:
            How many attempts were stopped.
        """
        if await self.wait_idle(grace_s):
            return 0
        left = list(self.held.values())
        logger.info("%d attempt(s) still running after %g s: stopping them", len(left), grace_s)
        for attempt in left:
            attempt.stop(reason)
        return len(left)
