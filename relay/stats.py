"""What a relay knows about its destinations: JetStream backlog, jobs in flight, its own held jobs, workers.

The same figures answer requests on ``subjects.relay_stats(name)`` (for ``ekiden ls destinations``) and
feed the Prometheus metrics endpoint. ``pending`` and ``running`` are the destination consumer's
``num_pending`` (in the stream, not yet delivered) and ``num_ack_pending`` (delivered, not yet acked: being
run); ``held`` is this relay's backlog not yet in JetStream; ``workers`` counts live workers from their
heartbeats; ``oldest_pending_age_s`` is the age of the oldest job not yet delivered (from the stream's own
timestamp, so it depends on the clocks of the relay and the NATS server agreeing).
"""

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.errors import Error as NatsError
from nats.js import JetStreamContext
from nats.js.errors import NotFoundError

from relay.forwarding import Forwarder
from relay.presence import Presence
from relay.requests import answer, refuse
from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.errors import WireError
from schemas.messages import Envelope, Kind
from schemas.names import is_valid_name

logger = logging.getLogger(__name__)

#: Seconds one destination's JetStream lookups may take before its figures are reported unknown.
JS_STATS_TIMEOUT_S = 2.0


@dataclass(frozen=True, slots=True)
class DestinationStats:
    """One destination as one relay sees it; None where JetStream could not be asked."""

    name: str
    pending: int | None
    running: int | None
    held: int
    workers: int
    oldest_pending_age_s: float | None

    def to_wire(self) -> dict[str, Any]:
        """The map sent in a stats reply."""
        return {
            "name": self.name,
            "pending": self.pending,
            "running": self.running,
            "held": self.held,
            "workers": self.workers,
            "oldest_pending_age_s": self.oldest_pending_age_s,
        }


#: Most destinations one stats request may ask about.
MAX_ASKED = 1000


class Stats:
    """Gathers the figures of every destination this relay forwarded to or heard workers of."""

    def __init__(
        self, relay: str, forwarder: Forwarder, presence: Presence, js: Callable[[], JetStreamContext | None]
    ) -> None:
        """Wire the sources.

        Args:
            relay: this relay's name.
            forwarder: the held backlog and the destinations forwarded to.
            presence: the live workers.
            js: the downstream JetStream, or None while it is not connected.
        """
        self.relay = relay
        self._forwarder = forwarder
        self._presence = presence
        self._js = js

    async def collect(self, asked: frozenset[str] = frozenset()) -> list[DestinationStats]:
        """The figures of every destination seen, and of those ``asked`` about, sorted by name."""
        names = sorted(self._forwarder.destinations() | self._presence.destinations() | asked)
        js = self._js()
        async with asyncio.TaskGroup() as tg:
            queues = [tg.create_task(_queue_state(js, name)) for name in names]
        stats: list[DestinationStats] = []
        for name, queue in zip(names, queues, strict=True):
            pending, running, oldest_s = queue.result()
            held, workers = self._forwarder.backlog(name), self._presence.workers(name)
            stats.append(DestinationStats(name, pending, running, held, workers, oldest_s))
        return stats

    async def serve(self, sub: Subscription) -> None:
        """Answer stats requests on ``sub`` until the subscription ends."""
        async for msg in sub.messages:
            try:
                await self._answer(msg)
            except Exception:  # the per-message boundary: a stats bug must not end the relay
                logger.exception("stats request on %s failed", msg.subject)

    async def _answer(self, msg: Msg) -> None:
        sid, asked = "", frozenset[str]()
        if msg.data:  # an empty request is fine; a body, if any, must be envelopes
            try:
                request = decode(msg.data)[0]
            except WireError as exc:
                await refuse(msg, exc)
                return
            sid = request.sid
            names = request.payload.get("destinations")
            if isinstance(names, list):
                asked = frozenset(n for n in names[:MAX_ASKED] if is_valid_name(n))
        payload = {"relay": self.relay, "destinations": [d.to_wire() for d in await self.collect(asked)]}
        await answer(msg, encode_one(Envelope(kind=Kind.REPLY, sid=sid, payload=payload, ts=time.time())))


async def _queue_state(js: JetStreamContext | None, dest: str) -> tuple[int | None, int | None, float | None]:
    """``(pending, running, oldest pending age)`` of a destination's consumer; Nones where JetStream cannot say."""
    if js is None:
        return None, None, None
    stream = subjects.dest_stream(dest)
    try:
        async with asyncio.timeout(JS_STATS_TIMEOUT_S):
            info = await js.consumer_info(stream, subjects.DEST_CONSUMER)
    except NotFoundError:  # no stream or consumer yet: nothing was ever queued there
        return 0, 0, None
    except (NatsError, TimeoutError, OSError) as exc:
        logger.debug("destination %s: no JetStream figures (%s: %s)", dest, type(exc).__name__, exc)
        return None, None, None
    pending, running = int(info.num_pending or 0), int(info.num_ack_pending or 0)
    if not pending:
        return pending, running, None
    # The oldest job not yet delivered is the first one after the last delivered stream sequence.
    after = (info.delivered.stream_seq or 0) if info.delivered is not None else 0
    try:
        async with asyncio.timeout(JS_STATS_TIMEOUT_S):
            first = await js.get_msg(stream, seq=after + 1, subject=subjects.dest_run(dest), next=True)
    except (NatsError, TimeoutError, OSError) as exc:  # delivered meanwhile, or JetStream went away
        logger.debug("destination %s: no oldest pending job (%s: %s)", dest, type(exc).__name__, exc)
        return pending, running, None
    if first.time is None:
        return pending, running, None
    return pending, running, max(0.0, time.time() - first.time.timestamp())
