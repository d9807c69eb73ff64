"""A per-client token bucket: sustained `rate` beacons per second, bursts up to `burst`.

Keys are IP pseudonyms, never raw addresses. Each collector worker keeps its
own buckets (no shared state between processes), so with N workers a client
can reach up to N times the rate; the limit is meant to stop floods, not to
meter fair use.
"""

from __future__ import annotations

import time
from collections.abc import Callable


class RateLimiter:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 200_000) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: dict[str, list[float]] = {}  # key -> [tokens, last refill time]
        self._next_sweep = clock() + self._full_after

    @property
    def _full_after(self) -> float:
        """Seconds after which an idle bucket is full again, and can be forgotten."""
        return self.burst / self.rate

    def allow(self, key: str) -> bool:
        now = self.clock()
        if now >= self._next_sweep or len(self._buckets) > self.max_clients:
            self._sweep(now)
        bucket = self._buckets.get(key)
        if bucket is None:
            self._buckets[key] = [self.burst - 1.0, now]
            return True
        tokens = min(self.burst, bucket[0] + (now - bucket[1]) * self.rate)
        bucket[1] = now
        if tokens < 1.0:
            bucket[0] = tokens
            return False
        bucket[0] = tokens - 1.0
        return True

    def _sweep(self, now: float) -> None:
        # A bucket idle long enough to be full is the same as no bucket: drop it,
        # so memory follows the clients active in the last few seconds.
        horizon = now - self._full_after
        self._buckets = {k: b for k, b in self._buckets.items() if b[1] > horizon}
        if len(self._buckets) > self.max_clients:  # a flood of distinct clients: fail open
            self._buckets.clear()
        self._next_sweep = now + self._full_after
