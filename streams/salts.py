"""Visitor-hash salts, one per period.

Walking-skeleton version: a random salt per period held in memory by this
worker. The stream issue replaces it with salts shared through the compacted
`salts` topic (one salt per period across all workers, deleted after the grace
window). Never derived from the date: a date-derived salt makes hashes reversible.
"""

from __future__ import annotations

import secrets
from datetime import datetime

from tally.config import Settings


def period_key(received_at: datetime, period: str) -> str:
    return received_at.strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


class SaltKeeper:
    def __init__(self, settings: Settings) -> None:
        self.period = settings.salt_period
        self._salts: dict[str, bytes] = {}

    def salt_for(self, received_at: datetime) -> bytes:
        key = period_key(received_at, self.period)
        salt = self._salts.get(key)
        if salt is None:
            salt = self._salts[key] = secrets.token_bytes(32)
        return salt
