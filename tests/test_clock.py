"""Exact epoch milliseconds: datetime.timestamp() * 1000 is a float product and lands one
below for some instants; epoch_ms must not."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

from hypothesis import given
from hypothesis import strategies as st

from tally.clock import EPOCH, epoch_ms


def test_the_instant_a_float_product_gets_wrong():
    t = EPOCH + timedelta(seconds=256, milliseconds=85)
    assert int(t.timestamp() * 1000) == 256084  # why this module exists
    assert epoch_ms(t) == 256085


@given(st.integers(min_value=0, max_value=2**41), st.integers(min_value=0, max_value=999))
def test_whole_milliseconds_come_back_exactly(ms, extra_us):
    t = EPOCH + timedelta(milliseconds=ms, microseconds=extra_us)
    assert epoch_ms(t) == ms  # sub-millisecond parts are floored, never rounded up


def test_ints_pass_through_and_other_zones_count_from_utc():
    assert epoch_ms(1_700_000_000_123) == 1_700_000_000_123
    paris = datetime(2026, 1, 1, 1, 0, tzinfo=UTC).astimezone(ZoneInfo("Europe/Paris"))
    assert epoch_ms(paris) == epoch_ms(datetime(2026, 1, 1, 1, 0, tzinfo=UTC))
