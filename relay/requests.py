"""Consuming a request subscription in groups, so many requests share one database transaction."""

import asyncio
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from runtime.bus import reply
from schemas.codec import error_reply
from schemas.errors import ErrorCode, WireError

logger = logging.getLogger(__name__)

#: Most requests handled (and committed) together.
MAX_GROUP = 256

#: Groups whose answers wait at once (for the manager's acks, for PubAcks); the next group waits for a slot.
MAX_WAITING_GROUPS = 32

#: Takes a group of requests and answers each of them.
GroupHandler = Callable[[list[Msg]], Awaitable[None]]


async def serve_requests(sub: Subscription, handle: GroupHandler, max_group: int = MAX_GROUP) -> None:
    """Hand the requests on ``sub`` to ``handle``, every request already waiting in one call (group commit).

    While ``handle`` commits one group, the next requests queue up in the subscription and form the next
    group: one fsync serves every request that arrived meanwhile, whatever the request rate. Returns when
    the subscription ends (``sub.drain()`` or ``sub.unsubscribe()``).
    """
    messages = sub.messages
    async for first in messages:
        group = [first]
        ended = False
        while len(group) < max_group and sub.pending_msgs > 0:
            try:
                group.append(await anext(messages))
            except StopAsyncIteration:
                ended = True
                break
        try:
            await handle(group)
        except Exception:  # a bug met by one odd request must not end the relay; its senders time out
            logger.exception("could not handle %d requests on %s", len(group), sub.subject)
        if ended:
            return


class GroupIntake(ABC):
    """Serves a request subscription in groups; a group may answer later, in a task of its own.

    A group committed now may wait for something else before it is answered (the manager's acks, JetStream's
    PubAcks) while the next group commits. At most ``MAX_WAITING_GROUPS`` wait at once, and ``serve``
    returns only once every one of them was answered.
    """

    def __init__(self) -> None:
        self._slots = asyncio.Semaphore(MAX_WAITING_GROUPS)
        self._later: asyncio.TaskGroup | None = None

    async def serve(self, sub: Subscription) -> None:
        """Take groups of requests on ``sub`` until it ends; return once every request is answered."""
        async with asyncio.TaskGroup() as tg:
            self._later = tg
            try:
                await serve_requests(sub, self.handle)
            finally:
                self._later = None

    @abstractmethod
    async def handle(self, msgs: list[Msg]) -> None:
        """Commit and answer one group of requests."""

    @property
    def can_wait(self) -> bool:
        """Whether a group may answer later (only while ``serve`` runs)."""
        return self._later is not None

    async def answer_later(self, answer: Callable[[], Awaitable[None]]) -> None:
        """Run ``answer`` in a task of its own, once a waiting slot is free."""
        assert self._later is not None, "answer_later outside serve"
        await self._slots.acquire()
        self._later.create_task(self._answer(answer))

    async def _answer(self, answer: Callable[[], Awaitable[None]]) -> None:
        try:
            await answer()
        finally:
            self._slots.release()


async def answer(msg: Msg, body: bytes) -> None:
    """Reply to one request; a reply that cannot be sent is the requester's to retry, never ours to crash on."""
    try:
        await reply(msg, body)
    except Exception as exc:  # connection closed or reconnecting: the requester times out and retries
        logger.warning("reply on %s not sent: %s", msg.subject, exc)


async def refuse(msg: Msg, error: WireError) -> None:
    """Answer a request with an ``error`` envelope (or just log it when there is no reply subject)."""
    logger.warning("refused a message on %s: %s", msg.subject, error)
    await answer(msg, error_reply(error, ts=time.time()))


def internal_error(what: str) -> WireError:
    """The retryable error sent when the relay itself failed (its database, most likely)."""
    return WireError(ErrorCode.INTERNAL, f"relay could not {what}; retry", retryable=True)
