"""The worker's hand-coded Avro path (streams/avro_bytes.py, beacons.FastStage1) against the
reference path (fastavro + streams/enrich.py + beacons.process_batch): same verdicts (drops
and bad rows, by reason), same pageview records to the byte, same window deltas; both follow
beacons.STEPS; malformed bytes are DecodeErrors."""

from __future__ import annotations

import io
import itertools
import random
from datetime import UTC, datetime, timedelta

import fastavro
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tally.schemas.avro_writer import encode_long
from tally.schemas.codec import DecodeError, default_codec
from tally.schemas.reasons import BadRowReason, DropReason
from tally.streams import beacons as stage1
from tally.streams.avro_bytes import (
    PLANES_FROM,
    BeaconReader,
    read_beacon_items,
    zigzag_packed,
    zigzag_varints,
)
from tally.streams.enrich import visitor_id, visitor_ids
from tally.streams.projection import reader
from tally.streams.windows import Delta, pageview_delta

from tests.stream_support import CHROME, FIREFOX, GOOGLEBOT, IPHONE, beacon

SALT = bytes(range(32))
PATHS = ["/", "/docs/a", "/docs/a/?utm_source=nl&utm_medium=mail&utm_campaign=c1", "//x//y/#frag",
         "/shop?utm_source=ads&utm_content=banner+2&utm_term=snow%20boots&utm_term=second",
         "https://shop.example/cart?utm_campaign=" + "z" * 300, "/caf\u00e9/\u65e5\u672c", "relative/path/",
         "/a?utm_source=", "http://[::1"]
REFERRERS = [None, "", "https://www.google.com/search?q=x", "https://t.co/abc", "https://site1.example/p",
             "https://news.example/story", "not a url", "https://www.spam.example/x", "http://[bad"]
UAS = [FIREFOX, CHROME, IPHONE, GOOGLEBOT, "", "curl/8.0", "Mozilla/5.0 (X11; Linux x86_64) HeadlessChrome/120",
       "Mozilla/5.0 (Linux; Android 9; CUBOT KING KONG Build/PPR1) AppleWebKit/537.36 (KHTML, like Gecko) "
       "Chrome/120.0 Mobile Safari/537.36"]


def _batch(rnd: random.Random, now: datetime, n: int) -> list[dict]:
    out = []
    for _ in range(n):
        b = beacon(site=rnd.choice(["site1.example", "b\u00fccher.example", "c.example"]), path=rnd.choice(PATHS),
                   ua=rnd.choice(UAS), ip=rnd.choice(["ip-1", "ip-2", "ip-\u00e9", ""]),
                   received_at=now - timedelta(hours=rnd.choice([0, 0, 0, 1, 30, 47, 60])),
                   referrer=rnd.choice(REFERRERS), datacenter=rnd.random() < 0.05,
                   event=rnd.choice(["pageview", "pageview", "", "signup"]), country=rnd.choice(["", "US", "GB"]))
        if rnd.random() < 0.2:
            b["props"] = {"plan": rnd.choice(["pro", "free"]), "k\u00e9y": "v"}
        out.append(b)
    return out


@pytest.mark.parametrize("keep_ua", [False, True])
def test_fast_stage1_equals_the_reference_path(keep_ua):
    codec = default_codec()
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    cfg = stage1.Stage1Config(partitions=5, salt_period="day", lateness_ms=48 * 3600_000, keep_user_agent=keep_ua,
                              spam=frozenset({"spam.example"}))
    fast = stage1.FastStage1(codec, cfg)
    read_dicts = reader(codec, "beacon_batch")
    rnd = random.Random(3)
    yesterday = stage1.period_of(now_ms - 86_400_000, "day")
    for offset in range(30):
        record = codec.encode("beacon_batch", {"items": _batch(rnd, now, rnd.choice([1, 7, 200]))})
        body, items = fast.read(record)
        salts = {p: SALT for p in fast.periods_needed(items, now_ms)}
        salts[yesterday] = None  # one period without a salt: its items are no_salt bad rows
        batch = read_dicts(record)
        assert fast.periods_needed(items, now_ms) == stage1.periods_needed(batch, cfg, now_ms)
        want = stage1.process_batch(codec, batch, 1, offset, salts, cfg, now_ms)
        got = fast.process(body, items, 1, offset, salts, now_ms)
        assert got.enriched == want.enriched  # byte for byte
        assert got.deltas == want.deltas
        assert got.accepted == want.accepted and got.drops == want.drops

        def rows(result):
            return [{k: v for k, v in r.items() if k != "failed_at"} for r in result.bad_rows]
        assert rows(got) == rows(want)
    assert fast._agents and fast._paths  # the caches were used


def _both_paths(codec, cfg, record, partition, offset, salts, now_ms):
    """(fast result, reference result) of one record, and the drops and bad rows as comparable rows."""
    fast = stage1.FastStage1(codec, cfg)
    body, items = fast.read(record)
    got = fast.process(body, items, partition, offset, salts, now_ms)
    want = stage1.process_batch(codec, reader(codec, "beacon_batch")(record), partition, offset, salts, cfg, now_ms)
    return got, want


def _assert_same(got, want):
    def rows(result):
        return [{k: v for k, v in r.items() if k != "failed_at"} for r in result.bad_rows]
    assert got.drops == want.drops and rows(got) == rows(want)  # the verdicts
    assert got.enriched == want.enriched  # the bytes
    assert got.deltas == want.deltas and got.accepted == want.accepted


NOW = datetime(2026, 11, 30, 12, 0, tzinfo=UTC)
_beacons = st.builds(
    beacon, site=st.sampled_from(["site1.example", "b\u00fccher.example"]), path=st.sampled_from(PATHS),
    ua=st.sampled_from(UAS), ip=st.sampled_from(["ip-1", "ip-2", "", "ip-\u00e9"]),
    received_at=st.sampled_from([NOW, NOW - timedelta(hours=1), NOW - timedelta(hours=30),
                                 NOW - timedelta(hours=60)]),
    referrer=st.sampled_from(REFERRERS), datacenter=st.booleans(), event=st.sampled_from(["pageview", "", "signup"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(items=st.lists(_beacons, min_size=0, max_size=40), keep_ua=st.booleans(), spam=st.booleans(),
       salted_days=st.sets(st.sampled_from([0, 1, 2])), offset=st.integers(0, 2**40))
def test_both_paths_give_the_same_verdicts_and_bytes(items, keep_ua, spam, salted_days, offset):
    codec = default_codec()
    now_ms = int(NOW.timestamp() * 1000)
    cfg = stage1.Stage1Config(partitions=4, salt_period="day", lateness_ms=48 * 3600_000, keep_user_agent=keep_ua,
                              spam=frozenset({"spam.example"}) if spam else frozenset())
    salts = {stage1.period_of(now_ms - d * 86_400_000, "day"): SALT for d in salted_days}  # the rest: no salt
    got, want = _both_paths(codec, cfg, codec.encode("beacon_batch", {"items": items}), 3, offset, salts, now_ms)
    _assert_same(got, want)
    stopped = sum(d["count"] for d in got.drops) + len(got.bad_rows)
    assert got.accepted + stopped == len(items)  # every beacon is accounted for, once


def test_the_fast_path_takes_its_order_and_reasons_from_steps(monkeypatch):
    codec = default_codec()
    now_ms = int(NOW.timestamp() * 1000)
    cfg = stage1.Stage1Config(partitions=2, salt_period="day", lateness_ms=48 * 3600_000)
    both = [beacon(ua=GOOGLEBOT, datacenter=True, received_at=NOW)]  # a bot from a datacenter
    record = codec.encode("beacon_batch", {"items": both})
    salts = {stage1.period_of(now_ms, "day"): SALT}
    assert [r for r, _ in stage1.STEPS] == [BadRowReason.TOO_LATE, DropReason.DATACENTER, DropReason.BOT,
                                            DropReason.REFERRER_SPAM, BadRowReason.NO_SALT]
    got, want = _both_paths(codec, cfg, record, 0, 1, salts, now_ms)
    assert [d["reason"] for d in got.drops] == [d["reason"] for d in want.drops] == ["datacenter"]
    swapped = list(stage1.STEPS)
    swapped[1], swapped[2] = swapped[2], swapped[1]  # the bot step before the datacenter step
    monkeypatch.setattr(stage1, "STEPS", swapped)
    got, want = _both_paths(codec, cfg, record, 0, 1, salts, now_ms)
    assert [d["reason"] for d in got.drops] == [d["reason"] for d in want.drops] == ["bot"]
    monkeypatch.setattr(stage1, "STEPS", [(BadRowReason.NO_SALT, stage1.no_salt)])  # only the salt step
    got, want = _both_paths(codec, cfg, record, 0, 1, {}, now_ms)
    _assert_same(got, want)
    assert [b["reason"] for b in got.bad_rows] == ["no_salt"] and not got.drops


def test_each_step_is_timed_once_per_record():
    codec = default_codec()
    now_ms = int(NOW.timestamp() * 1000)
    cfg = stage1.Stage1Config(partitions=2, salt_period="day", lateness_ms=48 * 3600_000)
    fast = stage1.FastStage1(codec, cfg)
    body, items = fast.read(codec.encode("beacon_batch", {"items": [beacon(received_at=NOW)] * 3}))
    fast.process(body, items, 0, 1, {stage1.period_of(now_ms, "day"): SALT}, now_ms)
    steps = {step: n for (stage, step), n in fast.times.items.items() if stage == "beacons"}
    assert steps == {"too_late": 3, "datacenter": 3, "bot": 3, "referrer_spam": 3, "no_salt": 3, "enrich": 3}
    assert all(s >= 0 for s in fast.times.seconds.values())


def test_one_visitor_hash_for_both_paths():
    keys = [("site1.example", "ip-1", FIREFOX), ("b\u00fccher.example", "", "")]
    assert visitor_ids(SALT, [tuple(x.encode() for x in k) for k in keys]) == [visitor_id(SALT, *k) for k in keys]
    assert visitor_id(SALT, *keys[0]) != visitor_id(bytes(32), *keys[0])  # salted


def test_delta_header_equals_the_delta_of_the_decoded_batch():
    codec = default_codec()
    now = datetime.now(UTC)
    cfg = stage1.Stage1Config(partitions=3, salt_period="day", lateness_ms=48 * 3600_000)
    fast = stage1.FastStage1(codec, cfg)
    read_pvs = reader(codec, "pageview_batch", {"received_at", "site", "path", "event", "visitor_id"})
    body, items = fast.read(codec.encode("beacon_batch", {"items": _batch(random.Random(4), now, 200)}))
    now_ms = int(now.timestamp() * 1000)
    out = fast.process(body, items, 0, 9, {p: SALT for p in fast.periods_needed(items, now_ms)}, now_ms)
    assert out.enriched
    for p, value in out.enriched:
        ours, theirs = Delta.decode(out.deltas[p]), pageview_delta(read_pvs(value))
        assert ours.paths == theirs.paths and ours.hours.keys() == theirs.hours.keys()
        for k, (events, pvs, ids) in ours.hours.items():
            assert (events, pvs, sorted(ids)) == (theirs.hours[k][0], theirs.hours[k][1], sorted(theirs.hours[k][2]))


def test_reader_matches_fastavro_and_rejects_malformed_bytes():
    codec = default_codec()
    items = _batch(random.Random(5), datetime.now(UTC), 50)
    record = codec.encode("beacon_batch", {"items": items})
    body, raw = BeaconReader(codec)(record)
    assert [r[3] for r in raw] == [int(b["received_at"].timestamp() * 1000) for b in items]
    assert [r[10].decode() for r in raw] == [b["user_agent"] for b in items]
    assert [None if r[7] is None else r[7].decode() for r in raw] == [b["referrer"] for b in items]
    # multi-block arrays (negative counts with a byte size), as other Avro writers may write them
    schema = codec.latest("beacon_batch").writer
    blocks = io.BytesIO()
    fastavro.schemaless_writer(blocks, schema, {"items": items})
    assert len(read_beacon_items(blocks.getvalue())) == 50
    for bad in (body[:len(body) // 2], body[:-3] + b"\xff\xff\xff", b"\x01", b"\x04\x48abc"):
        with pytest.raises(DecodeError):
            read_beacon_items(bad)
    with pytest.raises(DecodeError):
        BeaconReader(codec)(b"\xc3\x01" + b"\x00" * 8 + body)  # unknown fingerprint


def test_zigzag_varints_are_avro_longs():
    values = [0, -1, 1, 63, -64, 64, 2**63 - 1, -(2**63), 1234567890123, -98765432109876]
    values += np.random.default_rng(1).integers(-(2**63), 2**63 - 1, size=200).tolist()
    for v, enc in zip(values, zigzag_varints(values), strict=True):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, "long", v)
        assert enc == buf.getvalue(), v


@pytest.mark.parametrize("n", [5, PLANES_FROM - 1, PLANES_FROM, 3 * PLANES_FROM + 7])
def test_zigzag_packed_is_avro_longs_back_to_back(n):
    """Both paths (one byte plane at a time from PLANES_FROM values): the same bytes and offsets."""
    rnd = np.random.default_rng(n)
    edge = [0, -1, 1, 63, -64, 64, 8191, 8192, 2**63 - 1, -(2**63)]
    for values in (rnd.integers(0, 50, n), rnd.integers(-(2**63), 2**63 - 1, n),
                   np.concatenate([rnd.integers(-(2**40), 2**40, n), edge])):
        values = values.astype(np.int64)
        want = [encode_long(int(v)) for v in values]
        data, at = zigzag_packed(values)
        assert data == b"".join(want)
        assert at == [0, *itertools.accumulate(len(w) for w in want)]


def test_totals_encoder_writes_what_the_codec_writes():
    from tally.streams.windows import PartitionState, TotalsEncoder, aggregate_key

    codec = default_codec()
    st = PartitionState(4)
    t = int(datetime(2026, 11, 22, 10, 30, tzinfo=UTC).timestamp() * 1000)
    for o in range(3):
        st.apply(pageview_delta({"source_partition": 0, "source_offset": o, "items": [
            {"site": "b\u00fccher.example", "path": f"/p{o % 2}/\u00e9t\u00e9", "event": "pageview", "visitor_id": v,
             "received_at": t}
            for v in range(-5, 40 * o)]}))
        encode = TotalsEncoder(codec)
        emitted = st.take_dirty_windows()
        assert {k[0] for k, _ in emitted} == {"site_hour", "site_day", "site_month", "path_day"}
        for key, w in emitted:
            agg = st.aggregate(key)
            assert encode(st, key, w) == (aggregate_key(agg), codec.encode("window_aggregate", agg))
            assert encode(st, key, w)[1] == codec.encode("window_aggregate", agg)  # cached pieces
        assert encode.many(st, emitted) == [encode(st, key, w) for key, w in emitted]
        assert TotalsEncoder(codec).many(st, emitted) == [encode(st, key, w) for key, w in emitted]  # first sight


def test_totals_encoder_shares_a_window_across_partitions():
    from tally.streams.windows import PartitionState, TotalsEncoder

    codec = default_codec()
    encode = TotalsEncoder(codec)
    t = int(datetime(2026, 11, 22, 10, 30, tzinfo=UTC).timestamp() * 1000)
    for p in (0, 7, 300):  # a multi-byte partition number too
        st = PartitionState(p)
        st.apply(pageview_delta({"source_partition": 1, "source_offset": p, "items": [
            {"site": "a.com", "path": "/x", "event": "pageview", "visitor_id": p, "received_at": t}]}))
        for key, w in st.take_dirty_windows():
            assert encode(st, key, w)[1] == codec.encode("window_aggregate", st.aggregate(key))
