"""The collector's IP pseudonym keys: one random key per period (TALLY_SALT_PERIOD), agreed
by every collector through the compacted `edge-keys` topic (tally/periodkeys.py) and
destroyed with the salts after the grace window.

pseudonym = BLAKE2b-128(ip, key = edge secret ‖ BLAKE2b-256(site, key = period key))

so one address gives unlinkable pseudonyms on two sites and in two periods, and once a
period's key is tombstoned and compacted away nobody, not even the holder of the edge
secret, can test an address against that period's pseudonyms.

When the topic cannot be read at a period's start (broker down), the collector makes a
local random key for the period and counts it: pseudonyms then differ between collectors
for that period (more unique visitors are counted), but privacy does not degrade.
"""

from __future__ import annotations

import hashlib
import logging
import secrets
from datetime import UTC, datetime, timedelta

from tally.clock import epoch_ms
from tally.config import Settings
from tally.periodkeys import KEY_BYTES, PeriodKeys, expired, period_bounds, period_key
from tally.topics import EDGE_KEYS

log = logging.getLogger(__name__)

PREFETCH = timedelta(hours=2)  # the next period's key is agreed this long before it starts


class EdgeKeys:
    def __init__(self, settings: Settings, secret: bytes) -> None:
        self.settings = settings
        self._secret = hashlib.blake2b(secret, digest_size=32).digest()
        self.grace = timedelta(hours=settings.salt_grace_hours)
        self.offset = timedelta(seconds=settings.clock_offset_seconds)
        self._keys: dict[str, bytes] = {}
        self.local_keys = 0  # periods for which no agreed key could be had
        self._keeper: PeriodKeys | None = None
        self._period = ""
        self._end_ms = 0
        self._site_keys: dict[str, bytes] = {}
        self._local: set[str] = set()  # periods whose key was made here, to replace when agreed
        self._version = 0  # bumped when the key of a period in use is replaced
        self._seen = 0

    def start(self) -> None:
        if self._keeper is None:
            self._keeper = PeriodKeys(self.settings, self.settings.topic(EDGE_KEYS), "tally-collector-edge-keys")

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def refresh(self) -> None:
        """Agree on the current (and, near its end, the next) period's key; expire old ones.
        Blocking: the collector runs it in a thread."""
        self.start()
        assert self._keeper is not None
        now = self.now()
        periods = [period_key(now, self.settings.salt_period)]
        end = period_bounds(periods[0])[1]
        if end - now < PREFETCH:
            periods.append(period_key(end, self.settings.salt_period))
        for p in periods:
            if p not in self._keys or p in self._local:
                self.agree(p)
        self._keeper.expire()
        for p in [p for p in self._keys if expired(p, now, self.grace)]:
            del self._keys[p]

    def agree(self, period: str) -> bool:
        """Take the period's agreed key (proposing one if none exists); False if none could be had."""
        assert self._keeper is not None
        key = self._keeper.key(period)
        if key is None:
            return False
        self._keys[period] = key
        if period in self._local:
            self._local.discard(period)
            self._version += 1
        return True

    def periods(self) -> list[str]:
        """The periods whose keys this collector holds."""
        return sorted(self._keys)

    def close(self) -> None:
        if self._keeper is not None:
            self._keeper.close()

    def site_key(self, now_ms: int, site: str) -> tuple[bytes, bool]:
        """The 64-byte BLAKE2b key for `site` now, and whether the period changed (so caches
        of pseudonyms made under the previous key must be dropped)."""
        changed = False
        if now_ms >= self._end_ms or self._seen != self._version:
            self._seen = self._version
            now = datetime.fromtimestamp(now_ms / 1000, UTC) + self.offset
            self._period = period_key(now, self.settings.salt_period)
            end = period_bounds(self._period)[1] - self.offset
            self._end_ms = epoch_ms(end)
            self._site_keys = {}
            changed = True
            if self._period not in self._keys:
                log.warning("no agreed edge key for period %s: using a local random key", self._period)
                self.local_keys += 1
                self._local.add(self._period)
                self._keys[self._period] = secrets.token_bytes(KEY_BYTES)
        key = self._site_keys.get(site)
        if key is None:
            site_part = hashlib.blake2b(site.encode(), key=self._keys[self._period], digest_size=32).digest()
            key = self._site_keys[site] = self._secret + site_part
        return key, changed
