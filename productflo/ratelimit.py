"""A token bucket per connection: `rate` messages a second, bursts of twice that. Pure."""

from __future__ import annotations

import time
from collections.abc import Callable


class TokenBucket:
    def __init__(
        self, rate: float, burst: float, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = rate
        self.burst = burst
        self._clock = clock
        self._tokens = burst
        self._updated = clock()

    def take(self) -> bool:
        """Spend one token if there is one."""
        now = self._clock()
        self._tokens = min(self.burst, self._tokens + (now - self._updated) * self.rate)
        self._updated = now
        if self._tokens >= 1:
            self._tokens -= 1
            return True
        return False


class RateLimiter:
    """Admits `rate`/s (burst 2x). Refusals are counted; persistent abuse is reported.

    Abuse is a second bucket over refusals: a client that keeps sending after being told
    RATE_LIMITED, more than `rate` refusals a second for ten seconds on end, is abusive.
    """

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._messages = TokenBucket(rate, 2 * rate, clock)
        self._refusals = TokenBucket(rate, 10 * rate, clock)

    def admit(self) -> bool:
        return self._messages.take()

    def refused_is_abuse(self) -> bool:
        """Record one refusal; True once refusals have outrun their own allowance."""
        return not self._refusals.take()
