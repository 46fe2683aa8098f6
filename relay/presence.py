"""Which destination workers are alive: their REGISTER heartbeats on ``subjects.dest_heartbeat(dest)``.

Workers publish on their own (downstream) NATS only; the relay listens to every destination's heartbeat
subject there and counts, per destination, the workers heard within the last ``LIVE_INTERVALS`` heartbeat
intervals (the interval a worker states in its heartbeat, else the relay's ``worker_heartbeat_s``).
"""

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from nats.aio.subscription import Subscription

from schemas.codec import decode
from schemas.errors import WireError
from schemas.messages import Kind
from schemas.names import is_valid_name

logger = logging.getLogger(__name__)

#: A worker counts as live while its last heartbeat is at most this many intervals old.
LIVE_INTERVALS = 3
#: A worker silent for this many intervals is forgotten (its destination is still listed, with 0 workers).
FORGET_INTERVALS = 20


@dataclass(slots=True)
class _Worker:
    last_seen: float
    heartbeat_s: float
    running: int
    slots: int


class Presence:
    """Live workers per destination, from their heartbeats."""

    def __init__(self, default_heartbeat_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._default_heartbeat_s = default_heartbeat_s
        self._clock = clock
        #: destination -> worker name -> what its last heartbeat said
        self._workers: dict[str, dict[str, _Worker]] = {}

    def take(self, data: bytes, subject: str = "") -> None:
        """Record one heartbeat message; anything that is not a worker's REGISTER is logged and dropped."""
        try:
            envelopes = decode(data)
        except WireError as exc:
            logger.debug("bad worker heartbeat on %s: %s", subject, exc)
            return
        now = self._clock()
        for env in envelopes:
            p = env.payload
            name, dest = p.get("name"), p.get("dest")
            if env.kind != Kind.REGISTER or p.get("kind") != "worker" or not isinstance(name, str):
                continue
            if not is_valid_name(dest) or not isinstance(dest, str):
                continue
            workers = self._workers.setdefault(dest, {})
            if p.get("leaving") is True:
                workers.pop(name, None)
                continue
            beat = p.get("heartbeat_s")
            heartbeat_s = float(beat) if isinstance(beat, int | float) and beat > 0 else self._default_heartbeat_s
            workers[name] = _Worker(now, heartbeat_s, _count(p.get("running")), _count(p.get("slots")))

    def destinations(self) -> set[str]:
        """Every destination whose workers this relay has heard."""
        return set(self._workers)

    def workers(self, dest: str) -> int:
        """Workers of ``dest`` heard within their last ``LIVE_INTERVALS`` heartbeat intervals."""
        now = self._clock()
        workers = self._workers.get(dest, {})
        for name in [n for n, w in workers.items() if now - w.last_seen > FORGET_INTERVALS * w.heartbeat_s]:
            del workers[name]
        return sum(1 for w in workers.values() if now - w.last_seen <= LIVE_INTERVALS * w.heartbeat_s)

    async def serve(self, sub: Subscription) -> None:
        """Record every heartbeat on ``sub`` until the subscription ends."""
        async for msg in sub.messages:
            self.take(msg.data, msg.subject)


def _count(value: object) -> int:
    return value if type(value) is int and value >= 0 else 0
