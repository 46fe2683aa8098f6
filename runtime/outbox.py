"""An event outbox: keeps every event until the receiver acks it, resends what is not acked.

Agents, workers and relays report through one of these. Events are sent in batches (one NATS request
carries many envelopes); the reply is an ``ack`` envelope naming the event IDs that the receiver has
committed. Anything not acked within ``resend_after_s`` is sent again, and ``resend_all`` (called on a
manager's ``hello``) sends everything again at once. Receivers are idempotent by event ID, so a resend
is harmless. Where the process may restart, a ``Persistence`` makes the outbox durable.
"""

import asyncio
import logging
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Protocol

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from schemas.codec import chunked, decode
from schemas.errors import WireError
from schemas.messages import Envelope, Kind

logger = logging.getLogger(__name__)

#: Seconds to wait for an ack before the same events may be sent again.
RESEND_AFTER_S = 3.0
#: Seconds to wait for the reply to one batch.
REQUEST_TIMEOUT_S = 5.0
#: Batches in flight at once.
MAX_INFLIGHT_REQUESTS = 2
#: Largest body of one batch, in bytes.
MAX_BATCH_BYTES = 256 * 1024


class Persistence(Protocol):
    """Durable storage behind an outbox (the relay keeps it in SQLite)."""

    async def save(self, envelopes: list[Envelope]) -> None:
        """Store new events durably before they are first sent."""

    async def delete(self, eids: list[str]) -> None:
        """Forget events that were acked."""


@dataclass(slots=True)
class _Entry:
    env: Envelope
    subject: str
    sent_at: float = 0.0


def eid_of(env: Envelope) -> str:
    """The event ID an envelope is acked by."""
    eid = env.payload.get("eid")
    if not isinstance(eid, str):
        raise ValueError("event has no eid")
    return eid


class EventOutbox:
    """Sends events to ``route(env)`` subjects until each is acked."""

    def __init__(
        self,
        nc: Client,
        route: Callable[[Envelope], str],
        persistence: Persistence | None = None,
        on_acked: Callable[[list[str]], None] | None = None,
        resend_after_s: float = RESEND_AFTER_S,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
    ) -> None:
        self._nc = nc
        self._route = route
        self._persistence = persistence
        self._on_acked = on_acked
        self._resend_after_s = resend_after_s
        self._request_timeout_s = request_timeout_s
        self._entries: dict[str, _Entry] = {}
        self._wake = asyncio.Event()
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT_REQUESTS)
        self._sending: set[asyncio.Task[None]] = set()
        self._empty = asyncio.Event()
        self._empty.set()

    def __len__(self) -> int:
        return len(self._entries)

    def pending(self) -> list[Envelope]:
        """Events not yet acked, oldest first."""
        return [e.env for e in self._entries.values()]

    async def put(self, envelopes: list[Envelope]) -> None:
        """Take events to send; with persistence, they are durable when this returns.

        Sending starts before the save completes: whoever handed the events over is acked only after
        this returns, so a crash before the save loses nothing (they are sent again to us), and the
        receiver is idempotent by event ID. The persistence orders an ack's delete after the save.
        """
        if not envelopes:
            return
        self.restore(envelopes)
        if self._persistence is not None:
            await self._persistence.save(envelopes)

    def restore(self, envelopes: Iterable[Envelope]) -> None:
        """Take events that are already durable (loaded at start-up) without saving them again."""
        for env in envelopes:
            eid = eid_of(env)
            if eid not in self._entries:
                self._entries[eid] = _Entry(env, self._route(env))
        if self._entries:
            self._empty.clear()
        self._wake.set()

    def resend_all(self) -> None:
        """Send everything not acked again now (a manager said hello)."""
        for entry in self._entries.values():
            entry.sent_at = 0.0
        # Requests still waiting on a manager that died would hold the in-flight slots until they time
        # out, delaying everything behind them by up to a request timeout after a takeover.
        for task in self._sending:
            task.cancel()
        self._wake.set()

    async def wait_empty(self) -> None:
        """Return once every event has been acked."""
        await self._empty.wait()

    async def run(self) -> None:
        """Send and resend until cancelled."""
        async with asyncio.TaskGroup() as tg:
            while True:
                try:
                    async with asyncio.timeout(self._resend_after_s / 2):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                self._wake.clear()
                await asyncio.sleep(0)  # let events put in this loop tick join the batch
                for subject, body in self._due():
                    await self._inflight.acquire()
                    task = tg.create_task(self._send(subject, body))
                    self._sending.add(task)
                    task.add_done_callback(self._sending.discard)

    def _due(self) -> list[tuple[str, bytes]]:
        now = time.monotonic()
        by_subject: dict[str, list[Envelope]] = {}
        for entry in self._entries.values():
            if now - entry.sent_at >= self._resend_after_s:
                entry.sent_at = now
                by_subject.setdefault(entry.subject, []).append(entry.env)
        return [(subject, body) for subject, envs in by_subject.items() for body in chunked(envs, MAX_BATCH_BYTES)]

    async def _send(self, subject: str, body: bytes) -> None:
        try:
            msg = await self._nc.request(subject, body, timeout=self._request_timeout_s)
        except (NatsTimeoutError, NoRespondersError, TimeoutError) as exc:
            logger.debug("no ack from %s (%s); will resend", subject, type(exc).__name__)
            return
        except Exception as exc:  # connection closed or reconnecting: the resend timer tries again
            logger.warning("sending events to %s failed: %s", subject, exc)
            return
        finally:
            self._inflight.release()
        await self.take_reply(msg.data, subject)

    async def take_reply(self, data: bytes, subject: str = "") -> None:
        """Apply an ack (or error) reply to a batch."""
        try:
            replies = decode(data)
        except WireError as exc:
            logger.warning("bad ack from %s: %s", subject, exc)
            return
        acked: list[str] = []
        for env in replies:
            if env.kind == Kind.ACK:
                eids = env.payload.get("eids")
                if isinstance(eids, list):
                    acked.extend(e for e in eids if isinstance(e, str) and e in self._entries)
            elif env.kind == Kind.ERROR:
                logger.warning("events refused by %s: %s", subject, env.payload.get("message"))
        if not acked:
            return
        if self._persistence is not None:
            await self._persistence.delete(acked)
        for eid in acked:
            self._entries.pop(eid, None)
        if not self._entries:
            self._empty.set()
        if self._on_acked is not None:
            self._on_acked(acked)
