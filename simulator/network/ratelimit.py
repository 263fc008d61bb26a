"""Per-caller rate limiting: a token bucket per authenticated identity.

Owns the admission decision only. A query batch costs one token per query (a 5000-query batch
weighs what 5000 single queries weigh); every other call costs one. The buckets live in the
process: with several replicas each admits its own share, which bounds the total at replicas ×
rate. That is acceptable for overload protection (nothing another replica needs is lost); a
shared budget would need a store on the hot path of every call. A refusal tells whether it is
the first of an episode (the caller was admitted since its last refusal), so a flood is recorded
once, not once per refused call.

Must never: block (it answers at once), or import grpc.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from linkage.errors import ResourceExhausted


@dataclass(frozen=True, slots=True)
class RateLimit:
    """``per_second`` tokens refill continuously up to ``burst``."""

    per_second: float
    burst: float

    def __post_init__(self) -> None:
        if self.per_second <= 0 or self.burst < 1:
            raise ValueError("a rate limit needs per_second > 0 and burst >= 1")


class RateLimited(ResourceExhausted):
    """RATE_LIMITED, with ``retryAfterMs`` in the metadata; ``first`` is true for the first
    refusal of an episode (the caller was admitted since its previous refusal, or never refused).
    """

    def __init__(self, wait_seconds: float, *, first: bool) -> None:
        super().__init__(
            "RATE_LIMITED",
            "too many requests from this caller; retry later",
            metadata={"retryAfterMs": str(max(1, round(wait_seconds * 1000)))},
        )
        self.first = first


class _Bucket:
    __slots__ = ("limited", "tokens", "updated")

    def __init__(self, tokens: float, updated: float) -> None:
        self.tokens = tokens
        self.updated = updated
        self.limited = False  # refused since it was last admitted


class RateLimiter:
    """Token buckets keyed by caller identity."""

    def __init__(self, limit: RateLimit, clock: Callable[[], float] = time.monotonic) -> None:
        self._limit = limit
        self._clock = clock
        self._buckets: dict[str, _Bucket] = {}
        self._lock = threading.Lock()

    def admit(self, caller: str, cost: float = 1.0) -> None:
        """Take ``cost`` tokens from the caller's bucket or raise ``RateLimited``.

        A cost above the burst is charged as the burst, so one large legal batch can always get
        through an idle bucket.
        """
        cost = min(max(cost, 1.0), self._limit.burst)
        now = self._clock()
        with self._lock:
            bucket = self._buckets.get(caller)
            if bucket is None:
                bucket = self._buckets[caller] = _Bucket(self._limit.burst, now)
            elapsed = max(0.0, now - bucket.updated)
            bucket.tokens = min(self._limit.burst, bucket.tokens + elapsed * self._limit.per_second)
            bucket.updated = now
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                bucket.limited = False
                return
            wait = (cost - bucket.tokens) / self._limit.per_second
            first, bucket.limited = not bucket.limited, True
        raise RateLimited(wait, first=first)
