"""The worker's hand-coded Avro path (streams/avro_bytes.py, beacons.FastStage1) against the
reference path (fastavro + streams/enrich.py + beacons.process_batch): same pageview records
to the byte, same window deltas, drops and bad rows; malformed bytes are DecodeErrors."""

from __future__ import annotations

import io
import random
from datetime import UTC, datetime, timedelta

import fastavro
import numpy as np
import pytest
from tally.schemas.codec import DecodeError, default_codec
from tally.streams import beacons as stage1
from tally.streams.avro_bytes import BeaconReader, read_beacon_items, zigzag_varints
from tally.streams.projection import reader
from tally.streams.windows import Delta, pageview_delta

from tests.stream_support import CHROME, FIREFOX, GOOGLEBOT, IPHONE, beacon

SALT = bytes(range(32))
PATHS = ["/", "/docs/a", "/docs/a/?utm_source=nl&utm_medium=mail&utm_campaign=c1", "//x//y/#frag",
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
                   event=rnd.choice(["pageview", "pageview", "", "signup"]))
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


def test_totals_encoder_writes_what_the_codec_writes():
    from tally.streams.windows import PartitionState, TotalsEncoder, aggregate_key

    codec = default_codec()
    st = PartitionState(4)
    t = int(datetime(2026, 11, 22, 10, 30, tzinfo=UTC).timestamp() * 1000)
    for o in range(3):
        st.apply(pageview_delta({"source_partition": 0, "source_offset": o, "items": [
            {"site": "a.com", "path": f"/p{o % 2}", "event": "pageview", "visitor_id": v, "received_at": t}
            for v in range(-5, 40 * o)]}))
        encode = TotalsEncoder(codec)
        emitted = st.take_dirty_windows()
        assert {k[0] for k, _ in emitted} == {"site_hour", "site_day", "site_month", "path_day"}
        for key, w in emitted:
            agg = st.aggregate(key)
            assert encode(st, key, w) == (aggregate_key(agg), codec.encode("window_aggregate", agg))
            assert encode(st, key, w)[1] == codec.encode("window_aggregate", agg)  # cached pieces


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
