"""The collector's IP pseudonym (producers/collector/edgekeys.py) on a real broker: per site and
per period, agreed by every collector, and unrecoverable once the period's key expired."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from tally.producers.collector.app import Collector
from tally.producers.collector.edgekeys import EdgeKeys

from tally.periodkeys import period_key
from tests.stream_support import read_all

pytestmark = pytest.mark.integration

IP = "203.0.113.7"
DAY_MS = 86_400_000


def pseudonym(c: Collector, now_ms: int, site: str, ip: str = IP) -> str:
    key, _ = c.edge_keys.site_key(now_ms, site)
    return c.ip_pseudonym(ip, key)


def live_edge_keys(settings) -> dict[str, bytes]:
    """What compaction would leave of the edge-keys topic: the last value per key, no tombstones."""
    last: dict[str, bytes | None] = {}
    for m in read_all(settings, "edge-keys"):
        last[m.key().decode()] = m.value()
    return {k: v for k, v in last.items() if v is not None and not k.startswith("clock-probe")}


def test_one_ip_gives_unlinkable_pseudonyms_per_site_and_period_and_collectors_agree(tally_env):
    s = replace(tally_env.settings, edge_secret="Q3vT9xLp2mZ8rB6kN1wY4sD7fH0jG5cA+e/i")
    a, b = Collector(s), Collector(s)
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    tomorrow = period_key(now + timedelta(days=1), "day")
    for c in (a, b):
        c.edge_keys.refresh()
        assert c.edge_keys.agree(tomorrow)
    today_site1 = pseudonym(a, now_ms, "example.com")
    assert pseudonym(b, now_ms, "example.com") == today_site1  # two collectors, one visitor
    assert pseudonym(a, now_ms, "example.com", "203.0.113.8") != today_site1
    assert pseudonym(a, now_ms, "localhost") != today_site1  # another site
    next_day_ms = int(datetime.fromisoformat(tomorrow).replace(tzinfo=UTC).timestamp() * 1000) + 1000
    tomorrow_site1 = pseudonym(a, next_day_ms, "example.com")
    assert tomorrow_site1 not in (today_site1, pseudonym(a, next_day_ms, "localhost"))
    assert a.edge_keys.local_keys == 0 and len(live_edge_keys(s)) == 2  # today's and tomorrow's
    for c in (a, b):
        c.edge_keys.close()


def test_an_expired_edge_key_is_tombstoned_and_forgotten(tally_env):
    # The keys' clock at noon: within PREFETCH (2 h) of midnight the next day's key is agreed
    # too, and this test would see two keys between 22:00 and 24:00 UTC.
    now = datetime.now(UTC)
    shift = int((now.replace(hour=12, minute=0, second=0, microsecond=0) - now).total_seconds())
    s = replace(tally_env.settings, clock_offset_seconds=shift)
    today = period_key(now + timedelta(seconds=shift), "day")
    first = EdgeKeys(s, b"s" * 32)
    first.refresh()
    assert [k.split(":")[0] for k in live_edge_keys(s)] == [today]
    first.close()
    later = EdgeKeys(replace(s, clock_offset_seconds=shift + 3 * 86400), b"s" * 32)  # past today + 48 h grace
    later.refresh()
    assert today not in [k.split(":")[0] for k in live_edge_keys(s)]
    assert today not in later.periods()
    later.close()
