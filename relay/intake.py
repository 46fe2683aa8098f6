"""Taking flexible jobs from managers: validate, fence, commit to SQLite, then ack (accepted, queued, refused)."""

import functools
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from nats.aio.msg import Msg

from relay.forwarding import Forwarder
from relay.requests import GroupIntake, answer, internal_error, refuse
from relay.store import HeldDispatch, RelayStore
from runtime.epochs import EpochFence
from schemas.codec import decode, encode_one
from schemas.errors import ErrorCode, WireError
from schemas.messages import Envelope, JobSpec, Kind
from schemas.names import is_valid_name

logger = logging.getLogger(__name__)


@dataclass(slots=True)
class _Request:
    """One dispatch request of a group and the answer it will get."""

    msg: Msg
    sid: str
    candidates: list[HeldDispatch] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    queued: list[str] = field(default_factory=list)
    refused: list[dict[str, Any]] = field(default_factory=list)

    def refuse(self, aid: str, code: ErrorCode, reason: str) -> None:
        self.refused.append({"attempt_id": aid, "code": str(code), "reason": reason})

    def ack(self) -> bytes:
        payload = {"accepted": self.accepted, "queued": self.queued, "refused": self.refused}
        return encode_one(Envelope(kind=Kind.ACK, sid=self.sid, payload=payload, ts=time.time()))


class DispatchIntake(GroupIntake):
    """Handles groups of requests on ``subjects.relay_run(name)``.

    Each dispatch is checked (``JobSpec.from_wire``, a destination, a routable server ID, an epoch no lower
    than the highest seen from its server ID). New attempt IDs are committed as held in one transaction for
    the whole group and handed to the forwarder; IDs the relay already holds or forwarded are accepted
    again and not stored or forwarded twice. Only then is each request answered: ``accepted`` names what
    the relay holds, ``queued`` those of them already in JetStream (waited for up to ``queued_wait_s`` in a
    task of its own, so the next group commits meanwhile). A destination whose backlog is at
    ``max_backlog`` gets ``unavailable``; a dispatch from a stale epoch gets ``conflict``.
    """

    def __init__(
        self,
        name: str,
        store: RelayStore,
        forwarder: Forwarder,
        max_backlog: int,
        fence: EpochFence | None = None,
        queued_wait_s: float = 0.0,
    ) -> None:
        super().__init__()
        self._name = name
        self._store = store
        self._forwarder = forwarder
        self._max_backlog = max_backlog
        self._fence = fence or EpochFence()
        self._queued_wait_s = queued_wait_s

    async def handle(self, msgs: list[Msg]) -> None:
        """Commit and answer one group of dispatch requests."""
        requests: list[_Request] = []
        for msg in msgs:
            request = await self._parse(msg)
            if request is not None:
                requests.append(request)
        if not requests:
            return
        ids = list(dict.fromkeys(d.attempt_id for r in requests for d in r.candidates))
        try:
            known = self._store.known(ids)
            new = self._admit(requests, known)
            # Forwarding starts while the commit runs: the manager is acked only after the commit, and
            # a dispatch forwarded but not committed is sent to us again and deduped by JetStream.
            self._forwarder.hold(new)
            await self._store.hold(new)
        except Exception:  # per-message handler: the requesters get a retryable error, the relay goes on
            logger.exception("relay %s: could not commit %d dispatches", self._name, len(ids))
            for r in requests:
                await refuse(r.msg, internal_error("store the dispatches"))
            return
        if new:
            logger.debug("relay %s: holding %d new dispatches", self._name, len(new))
        accepted = {aid for r in requests for aid in r.accepted}
        if not self.can_wait or not self._queued_wait_s or len(self._forwarder.queued(accepted)) == len(accepted):
            await _answer_all(requests, self._forwarder.queued(accepted))
            return
        await self.answer_later(functools.partial(self._answer_when_queued, requests, accepted))

    async def _answer_when_queued(self, requests: list["_Request"], accepted: set[str]) -> None:
        queued = await self._forwarder.wait_queued(accepted, self._queued_wait_s)
        await _answer_all(requests, queued)

    async def _parse(self, msg: Msg) -> _Request | None:
        try:
            envelopes = decode(msg.data)
        except WireError as exc:
            await refuse(msg, exc)
            return None
        request = _Request(msg, envelopes[0].sid)
        for env in envelopes:
            if env.kind != Kind.DISPATCH:
                logger.debug("relay %s: ignored a %s envelope on the dispatch subject", self._name, env.kind)
                continue
            try:
                held = _held(env)
            except ValueError as exc:
                aid = env.payload.get("attempt_id")
                request.refuse(aid if isinstance(aid, str) else "", ErrorCode.INVALID, str(exc))
                continue
            stale = self._fence.check(env)
            if stale is not None:
                request.refuse(held.attempt_id, ErrorCode.CONFLICT, stale)
                continue
            request.candidates.append(held)
        return request

    def _admit(self, requests: list[_Request], known: set[str]) -> list[HeldDispatch]:
        """Sort each candidate into accepted (known or new) or refused (backlog full); return the new ones."""
        new: dict[str, HeldDispatch] = {}
        added: dict[str, int] = {}
        for r, d in _each(requests):
            if d.attempt_id in known or d.attempt_id in new:
                r.accepted.append(d.attempt_id)
                continue
            waiting = self._forwarder.backlog(d.dest) + added.get(d.dest, 0)
            if waiting >= self._max_backlog:
                reason = f"relay {self._name} backlog full: {waiting} jobs waiting for destination {d.dest}"
                r.refuse(d.attempt_id, ErrorCode.UNAVAILABLE, reason)
                continue
            new[d.attempt_id] = d
            added[d.dest] = added.get(d.dest, 0) + 1
            r.accepted.append(d.attempt_id)
        if any(r.refused for r in requests):
            logger.warning("relay %s: refused %d dispatches", self._name, sum(len(r.refused) for r in requests))
        return list(new.values())


async def _answer_all(requests: list[_Request], queued: list[str]) -> None:
    """Answer each request, naming which of its accepted attempts are ``queued``."""
    in_stream = set(queued)
    for r in requests:
        r.queued = [aid for aid in r.accepted if aid in in_stream]
        await answer(r.msg, r.ack())


def _each(requests: list[_Request]) -> Iterator[tuple[_Request, HeldDispatch]]:
    for r in requests:
        for d in r.candidates:
            yield r, d


def _held(env: Envelope) -> HeldDispatch:
    """Check one dispatch envelope and turn it into the row the relay holds.

    Raises:
        ValueError: the job spec is invalid, it names no valid destination, or its server ID could not
            carry events back.
    """
    spec = JobSpec.from_wire(env.payload)
    if spec.dest is None:
        raise ValueError("a flexible job needs a destination (dest)")
    if not is_valid_name(spec.dest):
        raise ValueError(f"invalid destination name {spec.dest!r}")
    if not is_valid_name(env.sid):
        raise ValueError(f"invalid server ID {env.sid!r}: events could not be routed back")
    return HeldDispatch(spec.attempt_id, spec.dest, encode_one(env))
