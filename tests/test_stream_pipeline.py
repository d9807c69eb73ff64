"""The stream worker on a real broker: windows, drops, bad rows, late events, poison messages."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tally.ops.stack import worker_ready

from tests.conftest import wait_for
from tests.stream_support import (
    CHROME,
    FIREFOX,
    GOOGLEBOT,
    IPHONE,
    beacon,
    decoded,
    expected_aggregates,
    latest_aggregates,
    produce,
    produce_batches,
)

pytestmark = pytest.mark.integration


def test_worker_counts_drops_and_rejects(tally_env, spawn):
    s = tally_env.settings
    tally_env.vars["TALLY_DROP_EMPTY_UA"] = "1"  # recorded by default (seed 002); dropped when configured
    worker = spawn(tally_env, "worker")
    now = datetime.now(UTC)
    good = [beacon(path=f"/p/{i % 3}?utm_source=news&x=1", ua=(FIREFOX, CHROME, IPHONE)[i % 3],
                   ip=f"ip-{i % 7}", referrer="https://www.google.com/search?q=x", received_at=now)
            for i in range(60)]
    late_ok = beacon(path="/late", ip="ip-late", received_at=now - timedelta(hours=47))
    too_late = beacon(path="/too-late", ip="ip-old", received_at=now - timedelta(hours=49))
    bots = [beacon(ua=GOOGLEBOT), beacon(ua=""), beacon(ua=CHROME.replace("Chrome/", "HeadlessChrome/")),
            beacon(datacenter=True)]
    produce_batches(s, [good[:30], good[30:] + bots, [late_ok, too_late]], partition=0)
    produce(s, "beacons.raw", [b"\x00not avro at all"], partition=0)  # poison
    after = beacon(path="/after-poison", ip="ip-after", received_at=now)
    produce_batches(s, [[after]], partition=0)  # the worker keeps going after the poison record

    accepted = good + [late_ok, after]
    expected = expected_aggregates(accepted)
    wait_for(lambda: worker_ready(s), 90, "worker in its consumer group")

    def day_total():
        return latest_aggregates(s).get(("site_day", "example.com", "", _day(now)))

    wait_for(lambda: day_total() == expected[("site_day", "example.com", "", _day(now))], 90,
             "today's site_day total")
    got = latest_aggregates(s)
    for key, value in expected.items():
        assert got.get(key) == value, (key, got.get(key), value)
    assert got[("path_day", "example.com", "/p/0", _day(now))] == (20, 0)  # query string normalised away

    # late but within the bound: its (old) window was updated and emitted
    assert got[("site_hour", "example.com", "", _hour(late_ok["received_at"]))] == (1, 1)

    # bad rows and drops leave stage 1 with the pageviews, but the totals through another
    # producer: give them a moment to land
    wait_for(lambda: len(decoded(s, "bad-rows", "bad_row")) >= 2 and len(decoded(s, "drops", "drop_count")) >= 4,
             30, "bad rows and drops")
    bad = decoded(s, "bad-rows", "bad_row")
    reasons = sorted(b["reason"] for b in bad)
    assert reasons == ["too_late", "undecodable"], bad
    poison = next(b for b in bad if b["reason"] == "undecodable")
    assert poison["original"] == b"\x00not avro at all" and poison["source_topic"] == s.topic("beacons.raw")
    assert poison["source_offset"] == 3

    drops = decoded(s, "drops", "drop_count")
    by_reason = {d["reason"]: d["count"] for d in drops}
    assert by_reason == {"bot": 1, "empty_user_agent": 1, "headless": 1, "datacenter": 1}

    pvs = [pv for b in decoded(s, "pageviews.enriched", "pageview_batch") for pv in b["items"]]
    assert len(pvs) == 62
    sample = next(pv for pv in pvs if pv["path"] == "/p/1")
    assert sample["utm_source"] == "news" and sample["referrer_source"] == "search"
    assert sample["browser"] == "Chrome" and sample["device"] == "desktop"
    assert sample["user_agent"] is None  # not kept by default
    assert worker.alive(), worker.output()[-3000:]


def _day(dt: datetime) -> int:
    ms = int(dt.timestamp() * 1000)
    return ms - ms % 86_400_000


def _hour(dt: datetime) -> int:
    ms = int(dt.timestamp() * 1000)
    return ms - ms % 3_600_000
