"""A per-client rate limit: sustained `rate` beacons per second, bursts up to `burst`.

Keys are digests from pseudonym.py, never raw addresses. Each collector worker
keeps its own state (nothing shared between processes), so with N workers a
client can reach up to N times the rate; the limit is there to stop floods, not
to meter fair use.

Per client it keeps one float, the GCRA's theoretical arrival time (TAT): the
token bucket's state as the moment the bucket will be full again, at most
burst/rate seconds ahead. A client whose TAT has passed is the same as a client
never seen, so state older than burst/rate seconds can be forgotten. It lives in
two generations of dicts, `current` and `previous`; every burst/rate seconds,
previous is dropped whole and current becomes previous: an O(1) expiry, no scan,
no per-entry timer, and every entry dropped is at least burst/rate seconds old,
a full bucket. Most traffic is new clients, so a miss costs two dict lookups and
one insert.

Memory is bounded: when `current` reaches max_clients (a flood of distinct
addresses) the generations turn early, so at most 2 x max_clients clients are
held (~100 bytes each). Then the clients forgotten are the ones idle the longest
(no request during the last max_clients new ones); a flooding client sends all
the time, stays in `current` and stays limited.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable


class RateLimiter:
    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic,
                 max_clients: int = 100_000) -> None:
        self.clock = clock
        self.max_clients = max_clients
        self._interval = 1.0 / rate  # seconds one beacon costs
        self._horizon = burst / rate  # the TAT is at most this far ahead: a generation's length
        self._slack = self._horizon - self._interval  # how far ahead the TAT may be for a request to pass
        self._current: dict[Hashable, float] = {}
        self._previous: dict[Hashable, float] = {}
        self._turn_at = clock() + self._horizon

    def __len__(self) -> int:
        """Clients held (current and previous generation)."""
        return len(self._current) + len(self._previous)

    def allow(self, key: Hashable) -> bool:
        now = self.clock()
        current = self._current
        if now >= self._turn_at or len(current) >= self.max_clients:
            # This is the first call since _turn_at: current's entries were all written
            # before it, so after a further horizon of silence they are full buckets too.
            self._previous = current if now < self._turn_at + self._horizon else {}
            self._current = current = {}
            self._turn_at = now + self._horizon
        tat = current.get(key)
        if tat is None:
            tat = self._previous.pop(key, None)
        if tat is None or tat < now:
            tat = now
        elif tat - now > self._slack:
            current[key] = tat  # kept: the bucket is empty and must stay so
            return False
        current[key] = tat + self._interval
        return True
