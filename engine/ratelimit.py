"""Per-caller token buckets for the control API, so one operator cannot starve the manager or the others.

The caller is the tenant token of the API subject (``subjects.api``): the one identity of a request that NATS
permissions vouch for (a reply subject or client name is the client's to choose). So every operator of one
tenant shares a bucket, and the admin has one of its own.
"""

import time
from collections.abc import Callable
from dataclasses import dataclass

#: Requests per second a caller may make, sustained.
DEFAULT_RATE_PER_S = 200.0
#: Requests a caller may make at once after a quiet spell.
DEFAULT_BURST = 400
#: Callers remembered before the idlest are forgotten (a forgotten caller starts with a full bucket).
MAX_CALLERS = 10_000
_EPSILON = 1e-9


@dataclass(slots=True)
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    """A token bucket per caller: ``rate_per_s`` refill, ``burst`` capacity."""

    def __init__(
        self,
        rate_per_s: float = DEFAULT_RATE_PER_S,
        burst: int = DEFAULT_BURST,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if rate_per_s <= 0 or burst < 1:
            raise ValueError("rate_per_s must be positive and burst at least 1")
        self._rate_per_s = rate_per_s
        self._burst = float(burst)
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}

    def take(self, caller: str) -> float:
        """Take one request's token; return 0.0 if granted, else the seconds until one is free."""
        now = self._clock()
        bucket = self._buckets.get(caller)
        if bucket is None:
            if len(self._buckets) >= MAX_CALLERS:
                self._forget_full(now)
            bucket = self._buckets[caller] = _Bucket(self._burst, now)
        else:
            bucket.tokens = min(self._burst, bucket.tokens + (now - bucket.at) * self._rate_per_s)
            bucket.at = now
        if bucket.tokens >= 1.0 - _EPSILON:  # one whole token, give or take float rounding
            bucket.tokens = max(0.0, bucket.tokens - 1.0)
            return 0.0
        return (1.0 - bucket.tokens) / self._rate_per_s

    def _forget_full(self, now: float) -> None:
        """Drop the buckets that have refilled (their callers lose nothing), or the oldest half if none has."""
        full = [c for c, b in self._buckets.items() if b.tokens + (now - b.at) * self._rate_per_s >= self._burst]
        for caller in full or sorted(self._buckets, key=lambda c: self._buckets[c].at)[: len(self._buckets) // 2]:
            del self._buckets[caller]
