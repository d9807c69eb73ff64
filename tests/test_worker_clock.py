"""The stream worker's clock is never ahead of the broker's (streams/stages.Clock): a host
clock that runs ahead would make current events too_late, close open windows and forget the
dedup window's ids. The chaos scenario (test_chaos_stream.py) runs a worker 72 h ahead."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from tally.streams.stages import CLOCK_TOLERANCE, Clock

from tally.clock import epoch_ms
from tally.config import Settings


def clock() -> Clock:
    return Clock(Settings.from_env({"TALLY_ALLOWED_LATENESS_HOURS": "48"}))


def test_a_clock_72_hours_ahead_is_held_back_to_the_brokers():
    c = clock()
    local = c.local()
    broker = local - timedelta(hours=72)
    c.agree(local, broker)
    assert abs(c.now() - datetime.now(UTC) + timedelta(hours=72)) < timedelta(seconds=5)
    # an event received at the broker's now is not too late, and its hour's window is open
    assert c.open_after_ms() < epoch_ms(broker) - 47 * 3600_000
    assert c.remember_after_ms() < epoch_ms(broker)


def test_a_clock_behind_the_brokers_or_within_the_tolerance_is_kept():
    c = clock()
    local = c.local()
    c.agree(local, local + timedelta(hours=3))
    assert c.ahead == timedelta(0)
    c.agree(local, local - CLOCK_TOLERANCE)
    assert c.ahead == timedelta(0)


def test_no_reading_keeps_the_last_correction_and_agreement_clears_it():
    c = clock()
    local = c.local()
    c.agree(local, local - timedelta(hours=72))
    c.agree(c.local(), None)  # the broker did not answer: still held back
    assert c.ahead > timedelta(hours=71)
    c.agree(c.local(), c.local())
    assert c.ahead == timedelta(0)
