"""Visitor-hash salts: 32 random bytes per period, shared by every worker through the
compacted single-partition `salts` topic and kept by tally.periodkeys.PeriodKeys (one salt
per period under races; tombstoned after `period end + TALLY_SALT_GRACE_HOURS`, never by
a worker whose clock runs ahead). A salt is never derived from the date, and events are
never hashed unsalted: without a salt they go to bad rows as `no_salt`.

Salts are secrets: nothing here logs a salt value.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from tally.streams.watchdog import Watchdog

from tally.config import Settings
from tally.periodkeys import KEY_BYTES, PeriodKeys, expired, period_bounds, period_key
from tally.topics import SALTS

SALT_BYTES = KEY_BYTES
__all__ = ["SALT_BYTES", "SaltCache", "SaltKeeper", "expired", "period_bounds", "period_key"]


class SaltKeeper(PeriodKeys):
    """The salts topic's keeper; `salt(period)` is PeriodKeys.key."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] | None = None,
                 proposer: str | None = None) -> None:
        super().__init__(settings, settings.topic(SALTS), f"{settings.app_id}-salts-reader", clock, proposer)

    def salt(self, period: str, timeout: float = 30.0) -> bytes | None:
        return self.key(period, timeout)


class SaltCache:
    """The salts this worker has looked up, by period, in front of a SaltKeeper (made on first
    need). Lookups run in a thread and are waits the watchdog can name; expired salts are
    forgotten here too (forward secrecy applies to this process's memory as well)."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime], watchdog: Watchdog) -> None:
        self.settings = settings
        self.clock = clock
        self.watchdog = watchdog
        self.grace = timedelta(hours=settings.salt_grace_hours)
        self._salts: dict[str, bytes] = {}
        self._keeper: SaltKeeper | None = None

    def start(self) -> SaltKeeper:
        """The keeper, made now if not yet: it starts with the worker, so a worker that sees
        no beacons still expires old salts."""
        if self._keeper is None:
            self._keeper = SaltKeeper(self.settings, clock=self.clock)
        return self._keeper

    async def get(self, period: str) -> bytes | None:
        salt = self._salts.get(period)
        if salt is not None:
            return salt
        self.start()
        with self.watchdog.waiting(f"the salt of period {period}"):
            salt = await asyncio.get_running_loop().run_in_executor(None, self._keeper.salt, period)
        if salt is not None:
            self._salts[period] = salt
        return salt

    def status(self) -> dict[str, Any]:
        """Which periods have a live salt (never a salt's value): for the health report, so
        `tally status` and the operations page show the current period present and expired
        periods gone."""
        now = self.clock()
        periods = self._keeper.known_periods() if self._keeper is not None else []
        return {"current": period_key(now, self.settings.salt_period), "periods": periods,
                "expired": [k for k in periods if expired(k, now, self.grace)]}

    def close(self) -> None:
        """Stop the keeper's thread and its Kafka clients (the worker is shutting down)."""
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    async def expire(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.start().expire)
        now = self.clock()
        for period in [k for k in self._salts if expired(k, now, self.grace)]:
            del self._salts[period]
