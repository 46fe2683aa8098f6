"""Sends committed dispatches to relays and standard agents, and feeds their answers back to the core."""

import asyncio
import logging
from itertools import islice

from nats.aio.client import Client
from nats.errors import NoRespondersError
from nats.errors import TimeoutError as NatsTimeoutError

from engine.core import DispatchReply, DispatchUnreachable, Item
from schemas.codec import decode, encode
from schemas.errors import WireError
from schemas.messages import Envelope, Kind

logger = logging.getLogger(__name__)

#: Dispatches in one request.
MAX_BATCH = 256
#: Requests in flight at once.
MAX_INFLIGHT = 8


class Dispatcher:
    """Batches dispatches per subject and reports each batch's fate to the core's queue."""

    def __init__(self, nc: Client, results: "asyncio.Queue[Item]", request_timeout_s: float) -> None:
        self._nc = nc
        self._results = results
        self._timeout_s = request_timeout_s
        self._pending: asyncio.Queue[list[tuple[str, Envelope]]] = asyncio.Queue()
        self._inflight = asyncio.Semaphore(MAX_INFLIGHT)

    def submit(self, dispatches: list[tuple[str, Envelope]]) -> None:
        """Queue committed dispatches for sending (never blocks the core)."""
        self._pending.put_nowait(dispatches)

    async def run(self) -> None:
        """Send until cancelled."""
        async with asyncio.TaskGroup() as tg:
            while True:
                batch = await self._pending.get()
                while not self._pending.empty():
                    batch.extend(self._pending.get_nowait())
                by_subject: dict[str, list[Envelope]] = {}
                for subject, env in batch:
                    by_subject.setdefault(subject, []).append(env)
                for subject, envs in by_subject.items():
                    it = iter(envs)
                    while chunk := list(islice(it, MAX_BATCH)):
                        await self._inflight.acquire()
                        tg.create_task(self._send(subject, chunk))

    async def _send(self, subject: str, envs: list[Envelope]) -> None:
        aids = [str(e.payload["attempt_id"]) for e in envs]
        item: Item
        try:
            msg = await self._nc.request(subject, encode(envs), timeout=self._timeout_s)
        except NoRespondersError:
            item = DispatchUnreachable(aids, f"{_target(subject)} is not reachable: nobody listens on {subject}")
        except (NatsTimeoutError, TimeoutError):
            item = DispatchUnreachable(aids, f"{_target(subject)} did not answer within {self._timeout_s:g}s")
        except Exception as exc:  # connection closed or reconnecting: the watchdog resends later
            item = DispatchUnreachable(aids, f"could not send to {_target(subject)}: {exc}")
        else:
            item = _reply_item(msg.data, aids, subject)
        finally:
            self._inflight.release()
        await self._results.put(item)


def _reply_item(data: bytes, aids: list[str], subject: str) -> Item:
    try:
        replies = decode(data)
    except WireError as exc:
        return DispatchUnreachable(aids, f"{_target(subject)} answered with a bad reply: {exc}")
    reply = replies[0]
    if reply.kind == Kind.ERROR:
        return DispatchUnreachable(aids, f"{_target(subject)} refused the batch: {reply.payload.get('message')}")
    accepted = [a for a in reply.payload.get("accepted", []) if isinstance(a, str)]
    refused = [
        (str(r.get("attempt_id")), str(r.get("code", "")), str(r.get("reason", "")))
        for r in reply.payload.get("refused", [])
        if isinstance(r, dict)
    ]
    queued = tuple(a for a in reply.payload.get("queued", []) if isinstance(a, str))
    return DispatchReply(accepted, refused, queued)


def _target(subject: str) -> str:
    parts = subject.split(".")
    return f"{parts[1]} {parts[2]!r}" if len(parts) >= 3 else subject
