"""Epoch fencing outside the manager: refuse dispatches from a manager that lost its lease.

A manager's lease carries an epoch that goes up at every takeover. Relays and standard agents remember the
highest epoch they have seen per server ID (from ``hello`` envelopes and from dispatches); a dispatch that
carries a lower one comes from a manager that was replaced (it woke up after a pause, or a network cut
healed) and is refused, so it cannot start work the new manager does not know about.
"""

import logging

from schemas.messages import Envelope, Kind

logger = logging.getLogger(__name__)


class EpochFence:
    """The highest epoch seen per server ID, kept in memory (a restart forgets it: the next hello teaches it)."""

    def __init__(self) -> None:
        self._highest: dict[str, int] = {}

    def highest(self, sid: str) -> int:
        """The highest epoch seen for ``sid`` (0 if none)."""
        return self._highest.get(sid, 0)

    def see(self, sid: str, epoch: int) -> None:
        """Remember ``epoch`` for ``sid`` if it is the highest yet."""
        if epoch > self._highest.get(sid, 0):
            self._highest[sid] = epoch

    def see_hello(self, env: Envelope) -> None:
        """Learn from a ``hello`` envelope (its payload's ``epoch``, else the envelope's)."""
        if env.kind != Kind.HELLO:
            return
        epoch = env.payload.get("epoch", env.epoch)
        if type(epoch) is int:
            self.see(env.sid, epoch)

    def check(self, env: Envelope) -> str | None:
        """Check a dispatch's epoch; return why it is refused, or None (and remember its epoch) if it is current."""
        highest = self._highest.get(env.sid, 0)
        if env.epoch < highest:
            reason = f"stale epoch {env.epoch} < {highest} from server {env.sid}"
            logger.warning("refused a dispatch: %s", reason)
            return reason
        self.see(env.sid, env.epoch)
        return None
