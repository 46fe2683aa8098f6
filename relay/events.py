"""Carrying events back: take workers' events durably, ack them, and let the outbox deliver them upstream."""

import logging
import time

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from relay.requests import answer, internal_error, refuse
from runtime.outbox import EventOutbox
from schemas import subjects
from schemas.codec import decode, encode_one
from schemas.errors import WireError
from schemas.messages import EVENT_KINDS, Envelope, Kind, ack_for
from schemas.names import is_valid_name

logger = logging.getLogger(__name__)


def route(env: Envelope) -> str:
    """Where the relay's outbox sends an event: the events subject of its server ID."""
    return subjects.events(env.sid)


class EventIntake:
    """Handles groups of requests on ``subjects.relay_events(name)`` from destination workers.

    The events of the whole group are stored in one transaction through the outbox (whose persistence is
    the relay's SQLite); only then does each worker get its ``ack`` with the event IDs it sent.
    """

    def __init__(self, outbox: EventOutbox) -> None:
        self._outbox = outbox

    async def handle(self, msgs: list[Msg]) -> None:
        """Store and ack one group of event batches."""
        taken: list[tuple[Msg, str, list[str]]] = []
        events: list[Envelope] = []
        for msg in msgs:
            try:
                batch = decode(msg.data)
            except WireError as exc:
                await refuse(msg, exc)
                continue
            eids: list[str] = []
            for env in batch:
                eid = env.payload.get("eid")
                if env.kind not in EVENT_KINDS or not isinstance(eid, str):
                    logger.debug("ignored a %s envelope with no event ID on %s", env.kind, msg.subject)
                    continue
                eids.append(eid)
                if is_valid_name(env.sid):
                    events.append(env)
                else:
                    # Acked so the worker stops resending it: no manager could ever take it.
                    logger.warning("dropped event %s: server ID %r cannot be routed", eid, env.sid)
            taken.append((msg, batch[0].sid, eids))
        try:
            await self._outbox.put(events)
        except Exception:  # per-message handler: the workers get a retryable error and resend
            logger.exception("could not store %d events", len(events))
            for msg, _, _ in taken:
                await refuse(msg, internal_error("store the events"))
            return
        now = time.time()
        for msg, sid, eids in taken:
            await answer(msg, encode_one(ack_for(eids, sid if is_valid_name(sid) else "", now)))


async def serve_hello(sub: Subscription, outbox: EventOutbox) -> None:
    """On every manager's ``hello``, send the events the manager has not acked again, now."""
    async for msg in sub.messages:
        try:
            envelopes = decode(msg.data)
        except WireError as exc:
            await refuse(msg, exc)
            continue
        for env in envelopes:
            if env.kind == Kind.HELLO:
                epoch = env.payload.get("epoch", env.epoch)
                logger.info("hello from server %s (epoch %s): resending %d events", env.sid, epoch, len(outbox))
                outbox.resend_all()
                break
