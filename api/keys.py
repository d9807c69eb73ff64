"""Stats API keys: made here, stored hashed in the warehouse (`api_keys`), checked per request.

A key is `tly_<key id>_<secret>`: 12 hex characters of public id (what `tally
api-key list` shows and `revoke` takes) and 256 random bits. Only its SHA-256
is stored; a request's key is hashed and compared in constant time. Each key
is scoped to sites (the Stats API) and tenants (product adoption; `*` = all) and
has its own rate limit.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

from tally.producers.collector.ratelimit import RateLimiter
from tally.sinks.keystore import KeyRecord

from tally.caches import bounded_put

PREFIX = "tly_"
_KEY = re.compile(r"^tly_([0-9a-f]{12})_[A-Za-z0-9_-]{43}$")
CACHE_SECONDS = 10.0  # a revoked key stops working within this time
CACHE_KEYS = 10_000  # keys looked up and kept at once


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key(name: str, sites: tuple[str, ...], tenants: tuple[str, ...] = ()) -> tuple[str, KeyRecord]:
    """(the key, shown once; the record to store, which holds only its hash)."""
    key_id = secrets.token_hex(6)
    key = f"{PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return key, KeyRecord(key_id, hash_key(key), name, sites, tenants, datetime.now(UTC))


def key_id_of(token: str) -> str | None:
    m = _KEY.match(token)
    return m[1] if m else None


@dataclass(frozen=True)
class Verdict:
    status: int  # 200, 401 or 429
    record: KeyRecord | None = None
    message: str = ""


MISSING = "Missing API key. Please use a valid Tally API key as a Bearer Token."
INVALID = ("Invalid API key or site ID. Please make sure you're using a valid API key with access to the site "
           "you've requested.")


class KeyChecker:
    """Bearer token -> key record, with a short cache (keys are looked up in the warehouse)
    and a token bucket per key."""

    def __init__(self, find: Callable[[str], Awaitable[KeyRecord | None]], per_hour: int, burst: int,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.find = find
        self.per_hour = per_hour
        self.limiter = RateLimiter(per_hour / 3600.0, burst, clock=clock)
        self.clock = clock
        self.cache: dict[str, tuple[float, KeyRecord | None]] = {}

    async def record(self, key_id: str) -> KeyRecord | None:
        now = self.clock()
        hit = self.cache.get(key_id)
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        record = await self.find(key_id)
        bounded_put(self.cache, key_id, (now, record), CACHE_KEYS)
        return record

    async def check(self, authorization: str | None) -> Verdict:
        if not authorization or not authorization.startswith("Bearer ") or not authorization[7:].strip():
            return Verdict(401, message=MISSING)
        token = authorization[7:].strip()
        key_id = key_id_of(token)
        record = await self.record(key_id) if key_id else None
        if record is None or record.revoked_at is not None or not hmac.compare_digest(hash_key(token), record.key_hash):
            return Verdict(401, message=INVALID)
        if not self.limiter.allow(record.key_id):
            return Verdict(429, record, f"Too many API requests. Your API key is limited to {self.per_hour} "
                                        "requests per hour.")
        return Verdict(200, record)
