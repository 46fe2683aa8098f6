"""Carrying events back: take workers' events durably, pass them on, and ack them once the manager did.

A worker's event batch is committed to the relay's SQLite (through the outbox, whose persistence is the
relay's store) and sent upstream at once. The worker gets its ack when the manager acked those events, or
after ``ack_wait_s`` if the manager is slow or unreachable, whichever comes first: from then on the relay
alone holds them (store and forward). So in the normal case a relay that dies (SIGKILL, host gone) strands
nothing: the worker did not get its ack, keeps its JetStream message, and sends the events again to another
relay of the same name.
"""

import asyncio
import functools
import logging
import time
from collections.abc import Iterable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from relay.requests import GroupIntake, answer, internal_error, refuse
from runtime.epochs import EpochFence
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


class ManagerAcks:
    """Which events the manager has not acked yet, for those who wait for its acks (wire ``acked`` to the outbox)."""

    def __init__(self) -> None:
        self._unacked: set[str] = set()
        self._progress = asyncio.Event()

    def expect(self, eids: Iterable[str]) -> None:
        """Events about to be put in the outbox."""
        self._unacked.update(eids)

    def acked(self, eids: list[str]) -> None:
        """The outbox's ``on_acked``: the manager committed these."""
        self._unacked.difference_update(eids)
        self._progress.set()
        self._progress = asyncio.Event()

    async def wait(self, eids: set[str], timeout_s: float) -> bool:
        """Wait up to ``timeout_s`` for the manager to ack every one of ``eids``; tell whether it did."""
        try:
            async with asyncio.timeout(timeout_s):
                while not eids.isdisjoint(self._unacked):
                    await self._progress.wait()
        except TimeoutError:
            return False
        return True


class EventIntake(GroupIntake):
    """Handles groups of requests on ``subjects.relay_events(name)`` from destination workers.

    The events of the whole group are stored in one transaction through the outbox; then, in a task of its
    own (so the next group commits meanwhile), the group waits for the manager's acks up to ``ack_wait_s``
    and each worker gets its ``ack`` with the event IDs it sent.
    """

    def __init__(self, outbox: EventOutbox, acks: ManagerAcks, ack_wait_s: float = 0.0) -> None:
        super().__init__()
        self._outbox = outbox
        self._acks = acks
        self._ack_wait_s = ack_wait_s

    async def handle(self, msgs: list[Msg]) -> None:
        """Store one group of event batches, then ack them (after the manager did, within the bound)."""
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
        stored = {str(env.payload["eid"]) for env in events}
        self._acks.expect(stored)
        try:
            await self._outbox.put(events)
        except Exception:  # per-message handler: the workers get a retryable error and resend
            logger.exception("could not store %d events", len(events))
            for msg, _, _ in taken:
                await refuse(msg, internal_error("store the events"))
            return
        if not self.can_wait or not self._ack_wait_s or not stored:
            await _ack_all(taken)
            return
        await self.answer_later(functools.partial(self._ack_when_passed_on, taken, stored))

    async def _ack_when_passed_on(self, taken: list[tuple[Msg, str, list[str]]], stored: set[str]) -> None:
        if not await self._acks.wait(stored, self._ack_wait_s):
            logger.debug("manager did not ack %d events within %g s: holding them", len(stored), self._ack_wait_s)
        await _ack_all(taken)


async def _ack_all(taken: list[tuple[Msg, str, list[str]]]) -> None:
    now = time.time()
    for msg, sid, eids in taken:
        await answer(msg, encode_one(ack_for(eids, sid if is_valid_name(sid) else "", now)))


async def serve_hello(sub: Subscription, outbox: EventOutbox, fence: EpochFence | None = None) -> None:
    """On every manager's ``hello``, learn its epoch and send the events the manager has not acked again, now."""
    async for msg in sub.messages:
        try:
            envelopes = decode(msg.data)
        except WireError as exc:
            await refuse(msg, exc)
            continue
        for env in envelopes:
            if env.kind == Kind.HELLO:
                epoch = env.payload.get("epoch", env.epoch)
                if fence is not None:
                    fence.see_hello(env)
                logger.info("hello from server %s (epoch %s): resending %d events", env.sid, epoch, len(outbox))
                outbox.resend_all()
                break
