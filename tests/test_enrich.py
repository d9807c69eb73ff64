"""Enrichment and window state: pure functions, no Kafka."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
from tally.streams.enrich import (
    agent_info,
    enrich,
    is_spam_referrer,
    normalize_path,
    referrer_source,
    visitor_id,
)
from tally.streams.state import fold, pack
from tally.streams.windows import Delta, PartitionState, VisitorSet, pageview_delta

from tests.stream_support import CHROME, FIREFOX, IPHONE, beacon

SALT = bytes(range(32))


def test_visitor_hash_depends_on_salt_site_ip_and_ua():
    base = visitor_id(SALT, "a.com", "ip", "ua")
    assert base == visitor_id(SALT, "a.com", "ip", "ua")
    assert len({base, visitor_id(bytes(32), "a.com", "ip", "ua"), visitor_id(SALT, "b.com", "ip", "ua"),
                visitor_id(SALT, "a.com", "ip2", "ua"), visitor_id(SALT, "a.com", "ip", "ua2")}) == 5


def test_paths_referrers_and_utm():
    assert normalize_path("https://Example.com//a//b/?utm_source=x#top")[:2] == ("example.com", "/a/b")
    assert normalize_path("/")[1] == "/"
    assert referrer_source("", "example.com") == "direct"
    assert referrer_source("www.example.com", "example.com") == "internal"
    assert referrer_source("www.google.co.uk", "example.com") == "search"
    assert referrer_source("duckduckgo.com", "example.com") == "search"
    assert referrer_source("t.co", "example.com") == "social"
    assert referrer_source("news.ycombinator.com", "example.com") == "social"
    assert referrer_source("blog.other.org", "example.com") == "other"
    assert is_spam_referrer("www.spam.example", frozenset({"spam.example"}))
    assert not is_spam_referrer("notspam.example", frozenset({"spam.example"}))


def test_enrich_keeps_no_ip_and_no_raw_ua_by_default():
    b = beacon(path="/x?utm_source=nl&utm_campaign=c1", ua=IPHONE, ip="secret-pseudonym",
               referrer="https://l.facebook.com/")
    pv = enrich(b, SALT, agent_info(IPHONE))
    assert "secret-pseudonym" not in repr(pv)
    assert pv["user_agent"] is None
    assert (pv["browser"], pv["os"], pv["device"]) == ("Mobile Safari", "iOS", "mobile")
    assert (pv["utm_source"], pv["utm_medium"], pv["utm_campaign"]) == ("nl", None, "c1")
    assert pv["referrer_source"] == "social"
    assert enrich(b, SALT, agent_info(IPHONE), keep_user_agent=True)["user_agent"] == IPHONE
    assert agent_info(CHROME).device == "desktop"


def test_enrich_keeps_the_first_utm_content_and_term_cut_to_200_characters():
    b = beacon(path="/x?utm_content=" + "c" * 300 + "&utm_term=snow%20boots&utm_term=second&utm_contents=no")
    pv = enrich(b, SALT, agent_info(FIREFOX))
    assert (pv["path"], pv["utm_content"], pv["utm_term"]) == ("/x", "c" * 200, "snow boots")
    assert enrich(beacon(path="/x?utm_source=nl"), SALT, agent_info(FIREFOX))["utm_content"] is None


def test_visitor_set_is_exact_and_compact():
    rnd = np.random.default_rng(1)
    vs, truth = VisitorSet(), set()
    for _ in range(200):
        ids = rnd.integers(0, 50_000, size=500, dtype=np.uint64)
        vs.add_many(np.unique(ids))
        truth.update(ids.tolist())
    assert len(vs) == len(truth)
    assert vs.nbytes() / len(vs) <= 16


def _batch(offset: int, items: list[dict]) -> dict:
    return {"source_partition": 0, "source_offset": offset, "items": items}


def _pv(visitor: int, path: str = "/", event: str = "pageview") -> dict:
    return {"site": "a.com", "path": path, "event": event, "visitor_id": visitor,
            "received_at": datetime(2026, 11, 22, 10, 30, tzinfo=UTC)}


def test_replays_change_nothing_and_the_changelog_rebuilds_the_same_state():
    st = PartitionState(3)
    deltas = [pageview_delta(_batch(o, [_pv(o % 4), _pv(-5, "/b"), _pv(7, event="signup")])) for o in range(10)]
    log = []
    for d in deltas + deltas[3:6]:  # the last three are a replay
        if st.apply(d):
            log.append(pack([d]))
    assert len(log) == 10
    day = [a for a in st.take_dirty() if a["kind"] == "site_day"][0]
    assert (day["count"], day["uniques"], day["version"], day["partition"]) == (20, 6, 30, 3)
    again = fold(3, log + [pack([deltas[4]])])  # a zombie's duplicate delta is skipped too
    assert {a["kind"] + a["dimension"]: (a["count"], a["uniques"], a["version"]) for a in again.take_dirty()} == \
        {a["kind"] + a["dimension"]: (a["count"], a["uniques"], a["version"])
         for a in (st.aggregate(k) for k in st.windows)}
    assert Delta.decode(deltas[0].encode()).hours.keys() == deltas[0].hours.keys()


def test_stage1_never_hashes_unsalted_and_names_every_drop():
    from tally.schemas.codec import default_codec
    from tally.streams import beacons as stage1
    from tally.streams.projection import reader

    codec = default_codec()
    now = datetime.now(UTC)
    items = [beacon(received_at=now), beacon(received_at=now, referrer="https://www.spam.example/x"),
             beacon(received_at=now, datacenter=True), beacon(received_at=now, ua="curl/8.0")]
    batch = reader(codec, "beacon_batch")(codec.encode("beacon_batch", {"items": items}))
    cfg = stage1.Stage1Config(partitions=4, salt_period="day", lateness_ms=48 * 3600_000,
                              spam=frozenset({"spam.example"}))
    now_ms = int(now.timestamp() * 1000)
    out = stage1.process_batch(codec, batch, 2, 17, {}, cfg, now_ms)  # no salt available
    assert out.enriched == [] and out.accepted == 0
    assert [b["reason"] for b in out.bad_rows] == ["no_salt"]
    original = codec.decode("beacon_batch", out.bad_rows[0]["original"])["items"]
    assert [str(i["event_id"]) for i in original] == [items[0]["event_id"]]
    assert (out.bad_rows[0]["source_partition"], out.bad_rows[0]["source_offset"]) == (2, 17)
    assert sorted(d["reason"] for d in out.drops) == ["bot", "datacenter", "referrer_spam"]

    salted = stage1.process_batch(codec, batch, 2, 17, {stage1.period_of(now_ms, "day"): SALT}, cfg, now_ms)
    assert salted.accepted == 1 and not salted.bad_rows
    (partition, value), = salted.enriched
    pv = codec.decode("pageview_batch", value)
    assert partition == pv["items"][0]["visitor_id"] % 4 and pv["source_offset"] == 17
