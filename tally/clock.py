"""Exact epoch milliseconds and microseconds.

datetime.timestamp() is a float, and `* 1000` lands one below for some instants
(256.085 s gives 256084 ms), so these use integer timedelta arithmetic instead."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(value: datetime | int) -> int:
    """Milliseconds since the epoch. An int is taken to be milliseconds already; a naive
    datetime is local time, as datetime.timestamp() reads it."""
    if isinstance(value, int):
        return value
    if value.tzinfo is None:
        value = value.astimezone(UTC)
    return (value - EPOCH) // _MS


def now_micros() -> int:
    """Microseconds since the epoch, now: the version column of replaced rows."""
    return time.time_ns() // 1000


def as_utc(value: datetime | None) -> datetime | None:
    """A DateTime read back from the warehouse (naive, in UTC) as an aware UTC datetime."""
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value
