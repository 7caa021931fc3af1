"""Per-caller rate limits: a token bucket for each caller.

A caller's bucket holds up to ``burst`` calls and fills at ``rate`` calls a second.
A call is admitted when the bucket holds at least one whole call; it then takes
its cost, which may be more than one (a ``CanSendBatch`` costs its numbers) and
may take the bucket below zero: the calls after it wait until the bucket has
filled back to one. So a limit bounds the work a caller asks for, not only its
calls, and a batch is never refused for being larger than ``burst``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

from services.settings import RateLimit

UNLIMITED = RateLimit(math.inf, 1)
"""A caller exempt from any default limit."""


class TokenBucket:
    __slots__ = ("_stamp", "_tokens", "limit")

    def __init__(self, limit: RateLimit, now: float) -> None:
        self.limit = limit
        self._tokens = float(limit.burst)
        self._stamp = now

    def take(self, now: float) -> float:
        """Admit one call (0.0) and take it from the bucket, or answer how many
        seconds until the bucket will hold a whole call again."""
        limit = self.limit
        tokens = min(limit.burst, self._tokens + (now - self._stamp) * limit.rate)
        self._stamp = now
        if tokens >= 1:
            self._tokens = tokens - 1
            return 0.0
        self._tokens = tokens
        return (1 - tokens) / limit.rate

    def charge(self, cost: float) -> None:
        """Take ``cost`` more from the bucket (the rest of an admitted call's cost)."""
        self._tokens -= cost


class CallerLimits:
    """Every caller's bucket, by the caller's name. A caller without a limit of its
    own has ``default`` (None: no limit)."""

    def __init__(
        self, default: RateLimit | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.default = default
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    def admit(self, caller: str, own: RateLimit | None) -> float:
        """0.0 when ``caller`` may make a call now (and it is counted), else the
        seconds it should wait before it tries again."""
        limit = own if own is not None else self.default
        if limit is None or limit.unlimited:
            return 0.0
        bucket = self._buckets.get(caller)
        if bucket is None or bucket.limit != limit:  # new, or changed in the tokens file
            bucket = self._buckets[caller] = TokenBucket(limit, self._clock())
        return bucket.take(self._clock())

    def charge(self, caller: str, cost: float) -> None:
        """Count ``cost`` more calls of an admitted call of ``caller``'s."""
        bucket = self._buckets.get(caller)
        if bucket is not None and cost > 0:
            bucket.charge(cost)
