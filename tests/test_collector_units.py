"""Pure pieces of the collector: body parsing, client address, rate limit, spool files."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import re
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from aiohttp import HttpVersion10, HttpVersion11, web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http_writer import StreamWriter
from aiohttp.test_utils import make_mocked_request
from hypothesis import given, settings
from hypothesis import strategies as st
from tally.producers.collector.answers import ACCEPTED_OK, NO_CONTENT, Prepared
from tally.producers.collector.client_ip import ClientAddress, parse_address
from tally.producers.collector.encode import DictEncoder, PieceEncoder
from tally.producers.collector.parse import (
    BadBeacon,
    clean_text,
    json_body,
    plausible_beacon,
    tally_beacon,
)
from tally.producers.collector.ratelimit import RateLimiter
from tally.producers.collector.spool import HEADER, Spool, SpoolLocked, adopt_orphans
from tally.schemas.codec import default_codec

from tally.ids import uuid7

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

ALLOWED = frozenset({"example.com"})


# --- parsing -------------------------------------------------------------------

def record(b) -> dict:
    return {"event_id": uuid7(1_700_000_000_000), "received_at": 1_700_000_000_000, "site": b.site,
            "path": b.path, "referrer": b.referrer, "event": b.event, "props": b.props,
            "user_agent": "", "ip_pseudonym": "", "datacenter": False}


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2000) | st.text(max_size=500).map(str.encode))
def test_any_body_parses_or_is_rejected_by_name(raw):
    for parse in (tally_beacon, plausible_beacon):
        try:
            beacon = parse(json_body(raw), ALLOWED)
        except BadBeacon as exc:
            assert str(exc)
            continue
        default_codec().encode("beacon_batch", {"items": [record(beacon)]})


json_leaf = st.none() | st.booleans() | st.integers() | st.floats() | st.text()


@settings(max_examples=400, deadline=None)
@given(st.dictionaries(st.sampled_from(["site", "path", "referrer", "event", "props"]),
                       json_leaf | st.dictionaries(st.text(), json_leaf | st.lists(json_leaf), max_size=35)))
def test_accepted_beacons_always_encode(body):
    body.setdefault("site", "example.com")
    try:
        beacon = tally_beacon(body, ALLOWED)
    except BadBeacon:
        return
    # Lone surrogates and friends are repaired, so one beacon cannot fail its whole batch.
    default_codec().encode("beacon_batch", {"items": [record(beacon)]})


@settings(max_examples=300, deadline=None)
@given(st.lists(st.dictionaries(st.sampled_from(["site", "path", "referrer", "event", "props"]),
                                json_leaf | st.dictionaries(st.text(), json_leaf, max_size=5)),
                min_size=1, max_size=6),
       st.text(max_size=300), st.booleans(), st.integers(0, 1 << 42))
def test_piece_encoder_writes_what_the_codec_writes(bodies, user_agent, datacenter, now_ms):
    """The collector's fast encoder (cached pieces) and the codec agree on every byte
    except the random event_id tails, and fastavro reads the same beacons back."""
    codec = default_codec()
    fast, slow = PieceEncoder(codec), DictEncoder(codec)
    user_agent = clean_text(user_agent)
    beacons = []
    for body in bodies:
        body.setdefault("site", "example.com")
        try:
            beacons.append(tally_beacon(body, ALLOWED))
        except BadBeacon:
            continue
    if not beacons:
        return
    args = [(now_ms + i // 2, b.site, b.path, b.referrer, b.event, b.props, user_agent, "ab" * 16, datacenter,
             ("", "GB", "JP")[i % 3])
            for i, b in enumerate(beacons)]
    items = [fast.item(*a) for a in args]
    records = [slow.item(*a) for a in args]
    for item, rec in zip(items, records, strict=True):
        rec["event_id"] = item[1:37].decode()  # the same id on both sides, to compare bytes
    assert fast.batch(items) == slow.batch(records)
    decoded = codec.decode("beacon_batch", fast.batch(items))["items"]
    for got, rec in zip(decoded, records, strict=True):
        assert str(got["event_id"]) == rec["event_id"] and uuid.UUID(rec["event_id"]).version == 7
        # Integer milliseconds (a float timestamp * 1000 can land one below: 256.085 -> 256084).
        assert (got["received_at"] - EPOCH) // timedelta(milliseconds=1) == rec["received_at"]
        assert {k: v for k, v in got.items() if k not in ("event_id", "received_at")} == {
            k: v for k, v in rec.items() if k not in ("event_id", "received_at")}
    assert fast.batch([]) == slow.batch([])


def test_lone_surrogates_are_repaired():
    # json_body refuses them; the repair guards values that arrive by other ways.
    with pytest.raises(BadBeacon):
        json_body(b'{"site":"example.com","path":"/\\ud800x"}')
    b = tally_beacon({"site": "example.com", "path": "/\ud800x", "props": {"k\udfff": "v"}}, ALLOWED)
    assert b.path == "/?x" and list(b.props) == ["k?"]


def test_plausible_mapping():
    b = plausible_beacon({"n": "Signup", "u": "https://example.com/a?b=1", "d": "example.com",
                          "r": None, "m": {"plan": "pro"}}, ALLOWED)
    assert (b.site, b.path, b.referrer, b.event, b.props) == (
        "example.com", "https://example.com/a?b=1", None, "Signup", {"plan": "pro"})
    with pytest.raises(BadBeacon, match="^n "):
        plausible_beacon({"u": "https://example.com/", "d": "example.com"}, ALLOWED)


@pytest.mark.parametrize("extra, props", [
    ({"sd": 40, "e": 5200}, {"tally:scroll_depth": "40", "tally:engaged_ms": "5200"}),
    ({"sd": "100", "e": "0"}, {"tally:scroll_depth": "100", "tally:engaged_ms": "0"}),  # strings of integers too
    ({"sd": 250}, {"tally:scroll_depth": "100"}),  # clamped, as Plausible does
    ({"e": 5 * 3600_000}, {"tally:engaged_ms": str(30 * 60_000)}),  # clamped to 30 minutes
    ({"sd": -3, "e": 900}, {"tally:engaged_ms": "900"}),  # a negative value is missing
    ({"sd": 12.5, "e": True, "p": {"author": "ann"}}, None),  # not integers: both missing
])
def test_engagement_events_keep_scroll_depth_and_engaged_time(extra, props):
    body = {"n": "engagement", "u": "https://example.com/post", "d": "example.com", **extra}
    if props is None:
        with pytest.raises(BadBeacon, match="engagement event needs an integer sd .* or e "):
            plausible_beacon(body, ALLOWED)
        return
    assert plausible_beacon(body, ALLOWED).props == props
    assert tally_beacon({"site": "example.com", "path": "/post", "event": "engagement", **extra}, ALLOWED).props == props


def test_reserved_prop_names_are_refused_and_other_events_ignore_sd_and_e():
    with pytest.raises(BadBeacon, match="^p.tally:scroll_depth: names starting with 'tally:' are reserved"):
        plausible_beacon({"n": "Signup", "u": "/", "d": "example.com", "p": {"tally:scroll_depth": 5}}, ALLOWED)
    with pytest.raises(BadBeacon, match="^props.tally:x"):
        tally_beacon({"site": "example.com", "path": "/", "event": "engagement", "sd": 1, "props": {"tally:x": 1}},
                     ALLOWED)
    assert plausible_beacon({"n": "pageview", "u": "/", "d": "example.com", "sd": 50, "e": 10}, ALLOWED).props == {}


@pytest.mark.parametrize(("event", "want"), [
    (None, "pageview"), ("signup", "signup"), (" signup ", "signup"), ("Outbound Link: Click", "Outbound Link: Click"),
    ("", None), ("  ", None), ("sign\nup", None), ("a" * 65, None), ("jane@example.com", None), (7, None)])
def test_event_names_get_the_same_checks_with_or_without_props(event, want):
    """A beacon as tally.js sends it (no props) takes a shortcut through the parser; it must
    be answered as the general path answers one with props."""
    for extra in ({}, {"referrer": "https://news.example/"}, {"props": {"plan": "pro"}}):
        body = {"site": "example.com", "path": "/", "event": event, **extra}
        if want is None:
            with pytest.raises(BadBeacon, match="^event "):
                tally_beacon(body, ALLOWED)
        else:
            assert tally_beacon(body, ALLOWED).event == want


def test_uuid7_is_version_7_and_time_ordered():
    a, b = uuid.UUID(uuid7(1_700_000_000_000)), uuid.UUID(uuid7(1_700_000_000_001))
    assert a.version == 7 and a.variant == uuid.RFC_4122 and a < b
    assert int.from_bytes(a.bytes[:6], "big") == 1_700_000_000_000


# --- client address ------------------------------------------------------------------

PROXIES = ClientAddress([ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("2001:db8::/32")])


@pytest.mark.parametrize(("peer", "xff", "want"), [
    ("203.0.113.5", ["1.1.1.1"], "203.0.113.5"),  # untrusted peer: XFF ignored
    ("10.0.0.2", [], "10.0.0.2"),
    ("10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
    ("10.0.0.2", ["6.6.6.6, 198.51.100.1"], "198.51.100.1"),  # forged prefix ignored
    ("10.0.0.2", ["6.6.6.6", "198.51.100.1, 10.0.0.9"], "198.51.100.1"),  # two headers, two proxies
    ("10.0.0.2", ["198.51.100.1:4711"], "198.51.100.1"),
    ("10.0.0.2", ["[2001:db9::1]:443"], "2001:db9::1"),
    ("10.0.0.2", ["::ffff:198.51.100.1"], "198.51.100.1"),
    ("10.0.0.2", ["nonsense, 10.0.0.7"], "10.0.0.7"),  # garbage behind trusted hops: last trusted hop
    ("2001:db8::1", ["10.0.0.3"], "10.0.0.3"),
    ("::ffff:10.0.0.2", ["198.51.100.1"], "198.51.100.1"),
    (None, ["198.51.100.1"], ""),
])
def test_rightmost_untrusted_forwarded_address_wins(peer, xff, want):
    assert PROXIES.resolve(peer, xff) == want


@given(st.text(max_size=80), st.lists(st.text(max_size=200), max_size=4))
def test_client_address_never_raises(peer, xff):
    out = PROXIES.resolve(peer, xff)
    assert out == "" or parse_address(out) is not None


# --- rate limit ------------------------------------------------------------------------

def test_token_bucket_allows_burst_then_rate():
    now = [0.0]
    rl = RateLimiter(rate=2, burst=3, clock=lambda: now[0])
    assert [rl.allow("a") for _ in range(5)] == [True, True, True, False, False]
    assert rl.allow("b")  # buckets are per client
    now[0] += 0.5  # one token back
    assert [rl.allow("a") for _ in range(2)] == [True, False]
    now[0] += 100  # idle buckets are forgotten
    rl.allow("c")
    assert len(rl) == 1


# --- spool ---------------------------------------------------------------------------------

def test_spool_replays_in_order_and_survives_restart(tmp_path):
    sp = Spool(tmp_path / "w0", max_bytes=1 << 20, segment_bytes=200)
    sp.open()
    ids = sp.append([b"a" * 100, b"b" * 100, b"c" * 100])
    assert ids == [1, 2, 3] and len(list((tmp_path / "w0").glob("seg-*.log"))) >= 2  # rolled
    sp.ack([1])
    sp.close()
    again = Spool(tmp_path / "w0", max_bytes=1 << 20, segment_bytes=200)
    again.open()
    assert again.pending_ids() == [2, 3]
    assert [again.read(i) for i in again.pending_ids()] == [b"b" * 100, b"c" * 100]
    assert again.append([b"d"]) == [4]
    again.ack([2, 3, 4])
    assert again.pending_count == 0 and again.size_bytes == 0  # everything delivered: files reset
    again.close()


def test_spool_cuts_a_torn_tail_and_refuses_what_does_not_fit(tmp_path):
    sp = Spool(tmp_path / "w0", max_bytes=3 * (HEADER.size + 100))
    sp.open()
    assert sp.append([b"x" * 100, b"y" * 100]) == [1, 2]
    assert sp.append([b"z" * 100, b"w" * 100]) == [3, None]  # a prefix is spooled, never a gap
    sp.close()
    seg = sorted((tmp_path / "w0").glob("seg-*.log"))[-1]
    with open(seg, "ab") as fh:  # a crash mid-write
        fh.write(b"TS\x01garbage")
    again = Spool(tmp_path / "w0", max_bytes=1 << 20)
    again.open()
    assert again.pending_ids() == [1, 2, 3]
    assert os.path.getsize(seg) == 3 * (HEADER.size + 100)
    again.close()


def test_spool_is_owned_by_one_process_and_orphans_are_adopted(tmp_path):
    old = Spool(tmp_path / "w1", max_bytes=1 << 20)
    old.open()
    old.append([b"orphan-1", b"orphan-2"])
    with pytest.raises(SpoolLocked):
        Spool(tmp_path / "w1", max_bytes=1 << 20).open()
    mine = Spool(tmp_path / "w0", max_bytes=1 << 20)
    mine.open()
    assert adopt_orphans(mine, tmp_path) == 0  # w1 is still owned
    old.close()
    assert adopt_orphans(mine, tmp_path) == 2
    assert [mine.read(i) for i in mine.pending_ids()] == [b"orphan-1", b"orphan-2"]
    mine.close()


def test_country_of_known_ranges_and_non_addresses():
    from tally.producers.collector.geo import country_of

    known = {"81.2.69.142": "GB", "1.0.16.1": "JP", "2a02:ff0::1": "TR", "216.160.83.56": "US"}
    assert {ip: country_of(ip) for ip in known} == known
    for nothing in ("", "203.0.113.9", "10.1.2.3", "::1", "not an address", "300.1.2.3"):
        assert country_of(nothing) == "", nothing


# --- answers made ahead ------------------------------------------------------------

def _written(answer_of, version=HttpVersion11, closing=False) -> tuple[object, bytes]:
    """(the answer, the bytes written for it) of a POST with `answer_of(request)` as answer."""
    sent: list[bytes] = []

    class Transport:
        def write(self, data: bytes) -> None:
            sent.append(bytes(data))

        def is_closing(self) -> bool:
            return False

        def get_extra_info(self, name: str, default: object = None) -> object:
            return default

    class Protocol(BaseProtocol):  # what a request asks of aiohttp's connection protocol
        ssl_context = peername = sockname = None

    async def run() -> object:
        protocol = Protocol(asyncio.get_running_loop())
        protocol.connection_made(Transport())  # type: ignore[arg-type]
        writer = StreamWriter(protocol, asyncio.get_running_loop())
        request = make_mocked_request("POST", "/api/v1/collect", version=version, closing=closing,
                                      writer=writer, protocol=protocol, transport=protocol.transport)
        response = answer_of(request)
        await response.prepare(request)
        await response.write_eof()
        return response

    response = asyncio.run(run())
    return response, re.sub(rb"\r\nDate: [^\r]+\r\n", b"\r\nDate: -\r\n", b"".join(sent))


@pytest.mark.parametrize("route", [NO_CONTENT, ACCEPTED_OK])
@pytest.mark.parametrize("origin", ["*", None, "https://Shop.example"])
def test_answers_made_ahead_are_the_bytes_aiohttp_writes(route, origin):
    made, data = _written(lambda request: route.answer(request, origin))
    assert isinstance(made, Prepared) and made.status == route.status
    aiohttp_made, aiohttp_data = _written(lambda _request: route.response(origin))
    assert data == aiohttp_data
    assert made.keep_alive is True and aiohttp_made.keep_alive is True


@pytest.mark.parametrize(("version", "closing", "origin"), [
    (HttpVersion10, False, "*"), (HttpVersion11, True, "*"), (HttpVersion11, False, "https://\u212aelvin.example")])
def test_http_1_0_closing_and_non_ascii_origin_requests_get_aiohttps_response(version, closing, origin):
    made, data = _written(lambda request: NO_CONTENT.answer(request, origin), version, closing)
    assert isinstance(made, web.Response) and made.status == 204
    assert not (closing and made.keep_alive)
    assert data.startswith(b"HTTP/1.0 204" if version == HttpVersion10 else b"HTTP/1.1 204")
