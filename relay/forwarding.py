"""Store and forward: publish held dispatches into their destinations' JetStream streams.

The forwarder keeps the held dispatches in memory (their rows are already committed), publishes them
window by window with ``js.publish_async`` (header ``Nats-Msg-Id`` = attempt ID, so a republish after a
crash or a lost PubAck is dropped by JetStream), and marks each window forwarded in one transaction once
the PubAcks are in. A destination that fails (JetStream unreachable, stream missing) backs off on its own;
the others go on. It sleeps on an event when there is nothing to do.

It also tells which attempts are *queued* (JetStream acked their publish): the intake names them in its
answer to the manager, which then knows it need not offer them again.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Iterable
from itertools import islice

from nats.js import JetStreamContext
from nats.js.api import PubAck
from nats.js.errors import NoStreamResponseError, NotFoundError

from relay.store import HeldDispatch, RelayStore
from runtime.destinations import ensure_destination
from schemas import subjects

logger = logging.getLogger(__name__)

#: Publishes awaiting their PubAck at once (also the JetStream context's ``publish_async_max_pending``).
MAX_INFLIGHT_PUBLISHES = 1024
#: Seconds to wait for the PubAcks of one window before its missing ones are retried.
PUBACK_TIMEOUT_S = 5.0
#: Seconds to wait for a destination's stream and consumer to be looked up or created.
ENSURE_TIMEOUT_S = 15.0
#: First and largest pause, in seconds, before a failing destination is tried again.
RETRY_MIN_S = 0.2
RETRY_MAX_S = 2.0

#: The JetStream dedupe header.
MSG_ID_HEADER = "Nats-Msg-Id"


class Forwarder:
    """Owns the held backlog and forwards it; run it with ``run(js)`` in a task."""

    def __init__(
        self,
        store: RelayStore,
        window: int = MAX_INFLIGHT_PUBLISHES,
        puback_timeout_s: float = PUBACK_TIMEOUT_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._store = store
        self._window = window
        self._puback_timeout_s = puback_timeout_s
        self._clock = clock
        #: destination -> attempt ID -> encoded dispatch, in arrival order
        self._held: dict[str, dict[str, bytes]] = {}
        #: every attempt ID in ``_held``
        self._ids: set[str] = set()
        #: held attempt IDs whose PubAck came, while their rows are being marked forwarded
        self._pubacked: set[str] = set()
        #: set (and replaced) whenever PubAcks came: wakes whoever waits for attempts to be queued
        self._progress = asyncio.Event()
        #: every destination this relay held or forwarded jobs for since it started
        self._seen: set[str] = set()
        self._ensured: set[str] = set()
        self._retry_at: dict[str, float] = {}
        self._retry_s: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._stopping = False

    def __len__(self) -> int:
        return len(self._ids)

    def backlog(self, dest: str) -> int:
        """Dispatches for ``dest`` not yet acked by JetStream."""
        return len(self._held.get(dest, ()))

    def destinations(self) -> set[str]:
        """Every destination held or forwarded to since the relay started."""
        return set(self._seen)

    def queued(self, attempt_ids: Iterable[str]) -> list[str]:
        """Those of ``attempt_ids`` (each held or forwarded by this relay) that are in JetStream."""
        return [aid for aid in attempt_ids if aid not in self._ids or aid in self._pubacked]

    async def wait_queued(self, attempt_ids: Collection[str], timeout_s: float) -> list[str]:
        """Wait up to ``timeout_s`` for the PubAcks of ``attempt_ids``; return those that are queued by then."""
        try:
            async with asyncio.timeout(timeout_s):
                while len(self.queued(attempt_ids)) < len(attempt_ids):
                    await self._progress.wait()
        except TimeoutError:
            pass
        return self.queued(attempt_ids)

    def hold(self, dispatches: Iterable[HeldDispatch]) -> None:
        """Take committed dispatches to forward."""
        for d in dispatches:
            self._seen.add(d.dest)
            per_dest = self._held.setdefault(d.dest, {})
            if d.attempt_id not in per_dest:
                per_dest[d.attempt_id] = d.body
                self._ids.add(d.attempt_id)
        if self._ids:
            self._idle.clear()
            self._wake.set()

    async def wait_idle(self) -> None:
        """Return once nothing is held."""
        await self._idle.wait()

    def stop(self) -> None:
        """Make ``run`` return after the window it is forwarding (at most ``puback_timeout_s`` later)."""
        self._stopping = True
        self._wake.set()

    async def run(self, js: JetStreamContext) -> None:
        """Forward until ``stop()``; a failed destination is retried with backoff, never dropped."""
        while not self._stopping:
            self._wake.clear()
            window = self._next_window()
            if window:
                await self._forward(js, window)
                continue
            try:
                async with asyncio.timeout(self._sleep_s()):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def _sleep_s(self) -> float | None:
        """Seconds until the first destination in backoff may be tried again (None: sleep until woken)."""
        due = [at for dest, at in self._retry_at.items() if self._held.get(dest)]
        return max(0.0, min(due) - self._clock()) if due else None

    def _next_window(self) -> dict[str, list[tuple[str, bytes]]]:
        """Up to ``window`` dispatches, shared fairly between the destinations not in backoff."""
        now = self._clock()
        ready = [d for d, held in self._held.items() if held and self._retry_at.get(d, 0.0) <= now]
        if not ready:
            return {}
        share = max(1, self._window // len(ready))
        return {d: list(islice(self._held[d].items(), share)) for d in ready}

    async def _forward(self, js: JetStreamContext, window: dict[str, list[tuple[str, bytes]]]) -> None:
        pending: list[tuple[str, str, asyncio.Future[PubAck]]] = []
        failed: dict[str, BaseException] = {}
        for dest, items in window.items():
            try:
                await self._ensure(js, dest)
                for aid, body in items:
                    fut = await js.publish_async(
                        subjects.dest_run(dest),
                        body,
                        headers={MSG_ID_HEADER: aid},
                        # No stall timeout: a window never exceeds publish_async_max_pending and every
                        # future is done or cancelled before the next, so a slot is always free (and a
                        # timeout here would cost a task per publish).
                    )
                    pending.append((dest, aid, fut))
            except Exception as exc:  # JetStream or the connection is down: keep them held, retry later
                failed[dest] = exc
        if pending:
            _, late = await asyncio.wait([f for _, _, f in pending], timeout=self._puback_timeout_s)
            for fut in late:
                fut.cancel()  # frees its publish_async slot; the retry carries the same Nats-Msg-Id
        forwarded: list[tuple[str, str]] = []
        for dest, aid, fut in pending:
            if fut.cancelled():
                failed.setdefault(dest, TimeoutError(f"no PubAck within {self._puback_timeout_s}s"))
            elif (error := fut.exception()) is not None:
                failed.setdefault(dest, error)
            else:
                forwarded.append((dest, aid))
        if forwarded:
            # Queued from the PubAck on: the manager may be told at once, before the rows are marked.
            self._pubacked.update(aid for _, aid in forwarded)
            self._progress.set()
            self._progress = asyncio.Event()
            await self._store.mark_forwarded(aid for _, aid in forwarded)
            self._release(forwarded)
        for dest in window:
            if dest in failed:
                self._back_off(dest, failed[dest])
            elif dest in self._retry_at:
                del self._retry_at[dest], self._retry_s[dest]
                logger.info("destination %s: forwarding again", dest)

    async def _ensure(self, js: JetStreamContext, dest: str) -> None:
        if dest not in self._ensured:
            async with asyncio.timeout(ENSURE_TIMEOUT_S):
                await ensure_destination(js, dest)
            self._ensured.add(dest)

    def _release(self, forwarded: list[tuple[str, str]]) -> None:
        for dest, aid in forwarded:
            self._pubacked.discard(aid)
            per_dest = self._held.get(dest)
            if per_dest is not None and per_dest.pop(aid, None) is not None:
                self._ids.discard(aid)
                if not per_dest:
                    del self._held[dest]
        logger.debug("forwarded %d dispatches", len(forwarded))
        if not self._ids:
            self._idle.set()

    def _back_off(self, dest: str, exc: BaseException) -> None:
        if isinstance(exc, NoStreamResponseError | NotFoundError):
            self._ensured.discard(dest)  # the stream went away (a new JetStream store?): create it again
        delay_s = self._retry_s.get(dest)
        if delay_s is None:
            logger.warning(
                "destination %s: cannot forward (%s: %s); %d jobs held, retrying",
                dest,
                type(exc).__name__,
                exc,
                self.backlog(dest),
            )
            delay_s = RETRY_MIN_S
        else:
            logger.debug("destination %s: still failing (%s)", dest, type(exc).__name__)
            delay_s = min(delay_s * 2, RETRY_MAX_S)
        self._retry_s[dest] = delay_s
        self._retry_at[dest] = self._clock() + delay_s
