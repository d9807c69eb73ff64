"""The edge collector's HTTP behaviour, against running collector processes and the real broker.

Two collectors run for the whole module on the session broker:
- `default`: the default settings (GPC honoured, DNT not, empty UA accepted,
  CORS `*`, no trusted proxies);
- `strict`: DNT honoured, empty UA dropped, a tiny rate limit, 127.0.0.1 as a
  trusted proxy, one configured CORS origin, fast drop-count flushes.
"""

from __future__ import annotations

import gzip
import json
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from tally.ops.stack import http_ok
from tally.schemas.codec import default_codec

from tally.config import Settings
from tally.kafka import consumer_config
from tests.conftest import REPO, Env, Proc, free_port, wait_for
from tests.helpers import collect_url, post_json, read_beacon_records, read_beacons

pytestmark = pytest.mark.integration

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"


@dataclass
class Collector:
    env: Env
    proc: Proc

    @property
    def settings(self) -> Settings:
        return self.env.settings

    def url(self, path: str = "/api/v1/collect") -> str:
        s = self.settings
        return f"http://{s.collector_host}:{s.collector_port}{path}"

    def post(self, body, headers=None, path="/api/v1/collect", raw=None):
        return post_json(self.url(path), body, headers={"User-Agent": FIREFOX, **(headers or {})}, raw=raw)

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as resp:
            return resp.read().decode()


def make_env(broker, tmp: Path, **extra: str) -> Env:
    from tally.topics import ensure_topics

    tag = uuid.uuid4().hex[:8]
    env = Env({
        "TALLY_KAFKA_BOOTSTRAP": broker.bootstrap,
        "TALLY_STATE_DIR": str(tmp / f"state-{tag}"),
        "TALLY_TOPIC_PREFIX": f"c{tag}.",
        "TALLY_TOPIC_PARTITIONS": "2",
        "TALLY_COLLECTOR_PORT": str(free_port()),
        "TALLY_ALLOWED_SITES": "example.com,localhost",
        "TALLY_LOG_LEVEL": "info",
        **extra,
    })
    ensure_topics(env.settings)
    return env


def start_collector(env: Env, log: Path, *args: str) -> Proc:
    with open(log, "wb") as fh:
        popen = subprocess.Popen([sys.executable, "-m", "tally.ops", "collector", *args], cwd=REPO,
                                 env=env.child_env(), stdout=fh, stderr=subprocess.STDOUT,
                                 start_new_session=True)
    proc = Proc("collector", popen, log)
    s = env.settings
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.collector_port}/healthz") or not proc.alive(), 30, "collector")
    assert proc.alive(), proc.output()[-3000:]
    return proc


@pytest.fixture(scope="module")
def collectors(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("collectors")
    envs = {
        "default": make_env(broker, tmp, TALLY_PROPS_ALLOWLIST="*:plan,*:seats,*:trial,example.com:file"),
        "strict": make_env(broker, tmp, TALLY_HONOR_DNT="1", TALLY_DROP_EMPTY_UA="1",
                           TALLY_RATE_LIMIT_PER_SECOND="0.5", TALLY_RATE_LIMIT_BURST="5",
                           TALLY_TRUSTED_PROXIES="127.0.0.1/32",
                           TALLY_CORS_ORIGINS="https://shop.example", TALLY_DROPS_FLUSH_SECONDS="0.3"),
    }
    out = {name: Collector(env, start_collector(env, tmp / f"{name}.log")) for name, env in envs.items()}
    yield out
    for c in out.values():
        c.proc.stop()


@pytest.fixture
def default(collectors) -> Collector:
    return collectors["default"]


@pytest.fixture
def strict(collectors) -> Collector:
    return collectors["strict"]


def beacons_for(c: Collector, marker: str, want: int, settle: float = 0.0) -> list[dict]:
    """Beacons in c's raw topic whose path contains marker."""
    found: list[dict] = []

    def enough():
        found[:] = [b for b in read_beacons(c.settings, 0, timeout=5.0) if marker in b["path"]]
        return len(found) >= want

    if want:
        wait_for(enough, 30, f"{want} beacons with {marker!r}", interval=0.1)
    if settle:
        time.sleep(settle)
        enough()
    return found


def mark() -> str:
    return uuid.uuid4().hex[:10]


# --- the happy path ---------------------------------------------------------------

def test_accepted_beacon_is_204_without_body_and_reaches_kafka_pseudonymised(default):
    m = mark()
    status, body, headers = default.post({"site": "Example.com", "path": f"/{m}/bob@example.com?x=1",
                                          "referrer": "https://www.google.com/search?q=bob"})
    assert status == 204 and body == b""
    assert headers.get("Access-Control-Allow-Origin") == "*"
    [b] = beacons_for(default, m, 1)
    # Minimised at the edge (minimise.py): no query string, no email, the referrer's origin.
    assert b["site"] == "example.com" and b["path"] == f"/{m}/:email"
    assert b["referrer"] == "https://www.google.com" and b["event"] == "pageview" and b["props"] == {}
    assert b["user_agent"] == FIREFOX
    assert b["event_id"].version == 7
    assert re.fullmatch(r"[0-9a-f]{32}", b["ip_pseudonym"])
    assert b["datacenter"] is False  # 127.0.0.1 is no datacenter


def test_custom_event_with_props_and_text_plain_body(default):
    m = mark()
    raw = json.dumps({"site": "example.com", "path": f"/{m}", "event": "signup",
                      "props": {"plan": "pro", "seats": 3, "trial": True, "none": None,
                                "email": "bob@example.com"}}).encode()
    status, body, _ = default.post(None, raw=raw, headers={"Content-Type": "text/plain;charset=UTF-8"})
    assert status == 204, body
    [b] = beacons_for(default, m, 1)
    assert b["event"] == "signup" and b["props"] == {"plan": "pro", "seats": "3", "trial": "true"}
    assert 'reason="prop_not_allowed"' in default.metrics()  # the email prop, dropped and counted


def test_long_path_is_truncated_to_2000_and_the_referrer_cut_to_its_origin(default):
    m = mark()
    status, _, _ = default.post({"site": "example.com", "path": f"/{m}/" + "x" * 3000,
                                 "referrer": "https://r.example/" + "b" * 3000})
    assert status == 204
    [b] = beacons_for(default, m, 1)
    assert len(b["path"]) == 2000 and b["referrer"] == "https://r.example"


def test_plausible_event_api_shape(default):
    m = mark()
    status, body, _ = default.post({"n": "pageview", "u": f"https://example.com/{m}?utm_source=x",
                                    "d": "other.org,example.com", "r": "https://news.example/"},
                                   path="/api/event", headers={"Content-Type": "text/plain"})
    assert status == 202 and body == b"ok"
    status, _, _ = default.post({"n": "Download", "u": f"https://example.com/{m}/dl", "d": "example.com",
                                 "p": json.dumps({"file": "a.pdf"})}, path="/api/event")
    assert status == 202
    got = sorted(beacons_for(default, m, 2), key=lambda b: b["event"])
    assert [(b["site"], b["event"]) for b in got] == [("example.com", "Download"), ("example.com", "pageview")]
    assert got[0]["props"] == {"file": "a.pdf"} and got[1]["referrer"] == "https://news.example"
    assert got[1]["path"] == f"/{m}?utm_source=x"  # Plausible's full URL, minimised
    status, body, _ = default.post({"n": "pageview", "u": "https://x/", "d": "other.org"}, path="/api/event")
    assert status == 400 and b"d " in body


def test_plausible_hash_mode_keeps_the_fragments_route_and_only_with_h(default):
    m = mark()
    base = f"https://example.com/{m}/app/?utm_source=x"
    sent = [  # (u, h) as Plausible's tracker sends them: h only in its hash mode
        (f"{base}#/settings?tab=2", 1),
        (f"{base}#!/orders/0f8fad5b-d9cb-469f-a165-70867728950e", 1),
        (f"{base}#access_token=ya29.a0AfH6SMBx8z9&token_type=Bearer", 1),  # parameters, not a route
        (f"{base}#/billing", None),
        (f"{base}#/plans", 0),
    ]
    for u, h in sent:
        body = {"n": "pageview", "u": u, "d": "example.com", **({} if h is None else {"h": h})}
        status, resp, _ = default.post(body, path="/api/event")
        assert status == 202, resp
    status, resp, _ = default.post({"n": "pageview", "u": f"{base}#/x", "d": "example.com", "h": "yes"},
                                   path="/api/event")
    assert status == 400 and resp.startswith(b'{"detail": "h must be 1')
    got = beacons_for(default, m, len(sent), settle=1.0)
    assert sorted(b["path"] for b in got) == sorted([
        f"/{m}/app/settings?utm_source=x", f"/{m}/app/orders/:uuid?utm_source=x", f"/{m}/app/?utm_source=x",
        f"/{m}/app/?utm_source=x", f"/{m}/app/?utm_source=x"])


def test_bots_are_answered_204_and_forwarded_for_the_stream_to_drop(default):
    m = mark()
    bot = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"
    status, _, _ = default.post({"site": "example.com", "path": f"/{m}"}, headers={"User-Agent": bot})
    assert status == 204
    [b] = beacons_for(default, m, 1)
    assert b["user_agent"] == bot


# --- bad input ---------------------------------------------------------------------

@pytest.mark.parametrize(("body", "field"), [
    ({"path": "/"}, "site"),
    ({"site": "", "path": "/"}, "site"),
    ({"site": "   ", "path": "/"}, "site"),
    ({"site": "evil.test", "path": "/"}, "site"),
    ({"site": 5, "path": "/"}, "site"),
    ({"site": "example.com"}, "path"),
    ({"site": "example.com", "path": ""}, "path"),
    ({"site": "example.com", "path": "/", "referrer": 7}, "referrer"),
    ({"site": "example.com", "path": "/", "event": ""}, "event"),
    ({"site": "example.com", "path": "/", "props": [1]}, "props"),
    ({"site": "example.com", "path": "/", "props": {"a": {"b": 1}}}, "props.a"),
    ([1, 2], "JSON object"),
])
def test_bad_beacons_are_400_naming_the_field(default, body, field):
    status, resp, _ = default.post(body)
    assert status == 400
    assert field in json.loads(resp)["detail"]


def test_malformed_json_is_400_and_oversized_body_is_413(default):
    status, resp, _ = default.post(None, raw=b'{"site": "example.com", "path": ')
    assert status == 400 and "JSON" in json.loads(resp)["detail"]
    status, _, _ = default.post(None, raw=b"[" * 4000 + b"]" * 4000)
    assert status == 400
    big = json.dumps({"site": "example.com", "path": "/" + "x" * 9000}).encode()
    status, resp, _ = default.post(None, raw=big)
    assert status == 413 and "8192" in json.loads(resp)["detail"]


def test_wrong_method_is_405_and_unknown_path_is_404(default):
    for url, method, want in ((default.url(), "GET", 405), (default.url("/api/v1/nope"), "POST", 404),
                              (default.url("/healthz"), "POST", 405)):
        req = urllib.request.Request(url, method=method, data=b"{}" if method == "POST" else None)
        try:
            urllib.request.urlopen(req, timeout=5)
            raise AssertionError(f"{method} {url} did not fail")
        except urllib.error.HTTPError as exc:
            assert exc.code == want
            assert exc.headers.get("Access-Control-Allow-Origin") == "*"


def raw_exchange(collector: Collector, request: bytes) -> bytes:
    """Send one raw HTTP/1.1 request (the collector closes after answering) and read every byte back."""
    s = collector.settings
    with socket.create_connection((s.collector_host, s.collector_port), timeout=5) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def test_routing_answers_allow_head_and_expect(default):
    """What the routes table answers by itself: 405 with Allow, HEAD on GET routes without a
    body, `Expect: 100-continue` before the body, and 417 for any other expectation."""
    req = urllib.request.Request(default.url(), method="PUT", data=b"{}")
    try:
        urllib.request.urlopen(req, timeout=5)
        raise AssertionError("PUT was accepted")
    except urllib.error.HTTPError as exc:
        assert exc.code == 405 and set(exc.headers["Allow"].split(",")) == {"OPTIONS", "POST"}
        assert "PUT" in json.loads(exc.read())["detail"]
    head = raw_exchange(default, b"HEAD /js/tally.js HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
    status_line, _, rest = head.partition(b"\r\n")
    assert status_line == b"HTTP/1.1 200 OK" and b"javascript" in rest
    assert rest.endswith(b"\r\n\r\n")  # headers only

    body = json.dumps({"site": "example.com", "path": "/expect"}).encode()
    head_part = (f"POST /api/v1/collect HTTP/1.1\r\nHost: x\r\nUser-Agent: {FIREFOX}\r\n"
                 f"Content-Length: {len(body)}\r\nExpect: 100-continue\r\nConnection: close\r\n\r\n").encode()
    s = default.settings
    with socket.create_connection((s.collector_host, s.collector_port), timeout=5) as sock:
        sock.sendall(head_part)
        assert sock.recv(4096).startswith(b"HTTP/1.1 100 Continue\r\n\r\n")  # before any body byte
        sock.sendall(body)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    assert b"".join(chunks).startswith(b"HTTP/1.1 204 No Content")

    odd = raw_exchange(default, b"POST /api/v1/collect HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
                                b"Expect: something-else\r\nConnection: close\r\n\r\n{}")
    assert odd.startswith(b"HTTP/1.1 417 ") and b"Expect" in odd


def test_empty_allowlist_rejects_everything(broker, tmp_path):
    env = make_env(broker, tmp_path, TALLY_ALLOWED_SITES="")
    proc = start_collector(env, tmp_path / "c.log")
    try:
        status, body, _ = post_json(collect_url(env.settings), {"site": "example.com", "path": "/"})
        assert status == 400 and b"allowlist" in body
    finally:
        proc.stop()


# --- CORS ----------------------------------------------------------------------------

def test_cors_preflight_and_configured_origins(default, strict):
    req = urllib.request.Request(default.url(), method="OPTIONS", headers={
        "Origin": "https://anywhere.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        assert resp.status == 204
        assert resp.headers["Access-Control-Allow-Origin"] == "*"
        assert "POST" in resp.headers["Access-Control-Allow-Methods"]
        assert "content-type" in resp.headers["Access-Control-Allow-Headers"].lower()
    # A configured list echoes only listed origins.
    status, _, headers = strict.post({"site": "example.com", "path": "/cors"},
                                     headers={"Origin": "https://shop.example"})
    assert status == 204 and headers["Access-Control-Allow-Origin"] == "https://shop.example"
    status, _, headers = strict.post({"site": "example.com", "path": "/cors"},
                                     headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in headers


# --- privacy at the edge -----------------------------------------------------------------

def test_gpc_dropped_by_default_dnt_only_when_configured(default, strict):
    m = mark()
    assert default.post({"site": "example.com", "path": f"/{m}/gpc"}, headers={"Sec-GPC": "1"})[0] == 204
    assert default.post({"site": "example.com", "path": f"/{m}/dnt"}, headers={"DNT": "1"})[0] == 204
    assert strict.post({"site": "example.com", "path": f"/{m}/sdnt"}, headers={"DNT": "1"})[0] == 204
    got = beacons_for(default, m, 1, settle=1.0)
    assert [b["path"] for b in got] == [f"/{m}/dnt"]  # DNT is not honoured by default
    assert beacons_for(strict, m, 0, settle=0.5) == []
    assert 'tally_collector_beacons_dropped_total{reason="gpc"}' in default.metrics()
    assert 'tally_collector_beacons_dropped_total{reason="dnt"}' in strict.metrics()


def test_empty_user_agent_accepted_by_default_dropped_when_configured(default, strict):
    m = mark()
    assert default.post({"site": "example.com", "path": f"/{m}"}, headers={"User-Agent": ""})[0] == 204
    assert strict.post({"site": "example.com", "path": f"/{m}"}, headers={"User-Agent": ""})[0] == 204
    [b] = beacons_for(default, m, 1)
    assert b["user_agent"] == ""
    assert beacons_for(strict, m, 0, settle=0.5) == []


def test_client_ip_from_trusted_proxy_chain_and_never_raw(default, strict):
    m = mark()
    # strict trusts 127.0.0.1: the rightmost untrusted XFF entry is the client, so
    # fake entries prepended by the client change nothing.
    for xff in ("203.0.113.9", "1.2.3.4, 203.0.113.9", "garbage, 9.9.9.9 ,203.0.113.9"):
        assert strict.post({"site": "example.com", "path": f"/{m}/a"}, headers={"X-Forwarded-For": xff})[0] == 204
    assert strict.post({"site": "example.com", "path": f"/{m}/b"},
                       headers={"X-Forwarded-For": "203.0.113.10"})[0] == 204
    assert strict.post({"site": "example.com", "path": f"/{m}/dc"},
                       headers={"X-Forwarded-For": "52.95.110.1"})[0] == 204  # an AWS address
    # default trusts no proxy: XFF is ignored entirely.
    for xff in ("203.0.113.9", "198.51.100.7"):
        assert default.post({"site": "example.com", "path": f"/{m}/c"}, headers={"X-Forwarded-For": xff})[0] == 204
    got = beacons_for(strict, m, 5)
    a = {b["ip_pseudonym"] for b in got if b["path"].endswith("/a")}
    b_ = {b["ip_pseudonym"] for b in got if b["path"].endswith("/b")}
    dc = [b for b in got if b["path"].endswith("/dc")]
    assert len(a) == 1 and len(b_) == 1 and a != b_
    assert dc[0]["datacenter"] is True
    assert not any(b["datacenter"] for b in got if not b["path"].endswith("/dc"))
    c = {b["ip_pseudonym"] for b in beacons_for(default, m, 2)}
    assert len(c) == 1
    # No raw address anywhere: not in Kafka, not in the logs, not on disk.
    raw = _raw_topic_bytes(strict.settings) + _raw_topic_bytes(default.settings)
    for ip in (b"203.0.113.9", b"203.0.113.10", b"52.95.110.1", b"198.51.100.7", b"127.0.0.1"):
        assert ip not in raw
        assert ip.decode() not in strict.proc.output() and ip.decode() not in default.proc.output()
        for f in Path(strict.settings.state_dir).rglob("*"):
            if f.is_file():
                assert ip not in f.read_bytes(), f


def test_a_request_on_an_error_path_logs_no_address(strict):
    """A malformed request takes aiohttp's error path ("Error handling request from %s"). The
    address is never formatted: the line carries the source's placeholder (logs.py ServerLog),
    not the filter's `<address>`, and neither the request text nor its X-Forwarded-For."""
    s, canary = strict.settings, "203.0.113.77"
    before = len(strict.proc.output())
    request = (f"POST /api/v1/collect HTTP/1.1\r\nHost: x\r\nX-Forwarded-For: {canary}\r\n"
               f"Bad Header Line {canary}\r\n\r\n")
    with socket.create_connection((s.collector_host, s.collector_port), timeout=5) as sock:
        sock.sendall(request.encode())
        assert sock.recv(4096).split(b"\r\n")[0].endswith(b" 400 Bad Request")
    out = wait_for(lambda: "Error handling request" in strict.proc.output()[before:] and strict.proc.output()[before:],
                   10, "the error line")
    assert "Error handling request from <client>: BadHttpMessage" in out
    for text in (canary, "127.0.0.1", "<address>", "Bad Header"):
        assert text not in out, out


def _raw_topic_bytes(s: Settings) -> bytes:
    topic = s.topic("beacons.raw")
    consumer = Consumer(consumer_config(s, f"raw-{uuid.uuid4().hex}"))
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, -2) for p in parts])
        out = b""
        for msg in consumer.consume(10000, 3):
            if msg.error() is None:
                out += msg.value()
        return out
    finally:
        consumer.close()


# --- abuse ---------------------------------------------------------------------------

def test_rate_limit_drops_floods_and_counts_them_in_metrics_and_the_drops_topic(strict):
    m = mark()
    headers = {"X-Forwarded-For": "198.51.100.77"}  # its own bucket, apart from other tests
    statuses = [strict.post({"site": "example.com", "path": f"/{m}/{i}"}, headers=headers)[0] for i in range(20)]
    assert statuses == [204] * 20
    got = beacons_for(strict, m, 5, settle=1.0)
    assert 5 <= len(got) <= 7  # burst 5, refilling at 0.5/s while the 20 requests are sent
    assert re.search(r'tally_collector_beacons_dropped_total\{reason="rate_limited"\} (1[3-5])\.0', strict.metrics())
    # Edge drops also go to the drops topic as drop_count records, for the sink to store.
    s = strict.settings
    codec, total, ids = default_codec(), 0, []
    consumer = Consumer(consumer_config(s, f"drops-{uuid.uuid4().hex}"))
    try:
        topic = s.topic("drops")
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        consumer.assign([TopicPartition(topic, p, -2) for p in parts])
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and total < 20 - len(got):
            for msg in consumer.consume(100, 0.5):
                if msg.error() is None:
                    rec = codec.decode("drop_count", msg.value())
                    assert msg.key() == rec["site"].encode()
                    # No input record at the edge: partition -1 and a random id per flushed count
                    assert rec["component"] == "collector" and rec["source_partition"] == -1
                    ids.append(rec["source_offset"])
                    if rec["reason"] == "rate_limited":
                        total += rec["count"]
    finally:
        consumer.close()
    assert total == 20 - len(got)
    assert len(set(ids)) == len(ids) and all(i >= 0 for i in ids), ids  # never taken for a replay


def test_rate_limit_holds_an_ipv6_client_rotating_inside_its_64(strict):
    """One subscriber holds a whole /64: new addresses inside it share one bucket,
    while each beacon keeps its own address's pseudonym."""
    m = mark()
    for i in range(1, 13):  # burst 5, 0.5/s: about 5 of 12 pass
        headers = {"X-Forwarded-For": f"2a01:4f8:c0c:{m[:4]}:{i:x}::{i:x}"}
        assert strict.post({"site": "example.com", "path": f"/{m}/rot/{i}"}, headers=headers)[0] == 204
    for i in range(1, 7):  # other /64s: a bucket each
        headers = {"X-Forwarded-For": f"2a01:4f8:c0d:{i:x}::1"}
        assert strict.post({"site": "example.com", "path": f"/{m}/spread/{i}"}, headers=headers)[0] == 204
    got = beacons_for(strict, m, 11, settle=1.0)
    rotating = [b for b in got if "/rot/" in b["path"]]
    assert 5 <= len(rotating) <= 7
    assert len({b["ip_pseudonym"] for b in rotating}) == len(rotating)
    assert len([b for b in got if "/spread/" in b["path"]]) == 6


# --- the tracker and operations ---------------------------------------------------------

@pytest.mark.parametrize(("name", "budget", "marker"), [
    ("tally.js", 1536, "pushState"), ("tally.outbound.js", 512, "Outbound Link: Click"),
    ("tally.downloads.js", 512, "File Download")])
def test_tracker_scripts_are_served_small(default, name, budget, marker):
    req = urllib.request.Request(default.url(f"/js/{name}"), headers={"Accept-Encoding": "gzip"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        packed = resp.read()
        assert resp.headers["Content-Encoding"] == "gzip"
        assert "javascript" in resp.headers["Content-Type"]
        assert resp.headers["Cache-Control"] == "public, max-age=3600"
    assert len(packed) <= budget
    js = gzip.decompress(packed).decode()
    assert marker in js and "/*" not in js  # minified: no comments go out
    with urllib.request.urlopen(default.url(f"/js/{name}"), timeout=5) as resp:
        assert "Content-Encoding" not in resp.headers and resp.read().decode() == js
    for forbidden in ("document.cookie", "localStorage", "sessionStorage", "indexedDB"):
        assert forbidden not in js


@pytest.mark.parametrize("path", ["/js/tally.min.js", "/js/../collector/app.py", "/js/%2e%2e/static/tally.js",
                                  "/js/", "/js/app.py", "/static/tally.js"])
def test_only_the_listed_scripts_are_served(default, path):
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(default.url(path), timeout=5)
    assert err.value.code == 404


def test_health_readiness_and_metrics(default):
    with urllib.request.urlopen(default.url("/healthz"), timeout=5) as resp:
        assert resp.status == 200
    with urllib.request.urlopen(default.url("/readyz"), timeout=5) as resp:
        ready = json.loads(resp.read())
        assert resp.status == 200 and ready["ready"] and ready["mode"] == "online"
    default.post({"site": "example.com", "path": "/metrics-check"})
    status, _, _ = default.post({"site": "example.com"})  # its own 400: the test needs no other test before it
    assert status == 400
    text = default.metrics()
    assert re.search(r'tally_collector_requests_total\{route="/api/v1/collect",status="204"\} [1-9]', text)
    assert re.search(r'tally_collector_requests_total\{route="/api/v1/collect",status="400"\} [1-9]', text)
    assert re.search(r"tally_collector_beacons_accepted_total [1-9]", text)
    assert "tally_collector_spool_entries 0.0" in text
    assert re.search(r'tally_collector_produce_seconds_bucket\{le="\+Inf"\} [1-9]', text)


def test_workers_share_one_port(broker, tmp_path):
    env = make_env(broker, tmp_path)
    proc = start_collector(env, tmp_path / "w.log", "--workers", "2")
    try:
        c = Collector(env, proc)
        m = mark()
        for i in range(40):
            assert c.post({"site": "example.com", "path": f"/{m}/{i}"})[0] == 204
        assert len(beacons_for(c, m, 40)) == 40
        children = Path(f"/proc/{proc.popen.pid}/task/{proc.popen.pid}/children").read_text().split()
        assert len(children) == 2
        # Metrics add up over both workers, whichever one serves the scrape.
        accepted = re.search(r"tally_collector_beacons_accepted_total (\d+)", c.metrics())
        assert accepted and int(accepted.group(1)) == 40
    finally:
        proc.stop()
    assert not proc.alive()


def test_a_batch_waits_for_company_only_while_an_idle_connection_could_bring_some(broker, tmp_path):
    """TALLY_COLLECTOR_BATCH_MS: while a connection without a request in progress is open (a
    browser's keep-alive connection, a proxy's pool), beacons arriving within the window share
    one Kafka record. When every open connection waits for an answer, nothing can join, so
    the batch goes at once. With 0, every event-loop pass sends its own record."""
    import threading

    def records_of(env: Env, proc: Proc, delays: list[float]) -> list[int]:
        """The records holding beacons posted, each on a connection of its own, after `delays`."""
        c, m = Collector(env, proc), mark()
        status: list[int] = []

        def send(i: int) -> None:
            time.sleep(delays[i])
            status.append(c.post({"site": "example.com", "path": f"/{m}/{i}"})[0])

        threads = [threading.Thread(target=send, args=(i,)) for i in range(len(delays))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert status == [204] * len(delays)
        return [len(r) for r in read_beacon_records(env.settings, len(delays)) if any(f"/{m}/" in b["path"] for b in r)]

    def idle_connection(env: Env) -> socket.socket:
        return socket.create_connection(("127.0.0.1", env.settings.collector_port), timeout=5)

    gathering = make_env(broker, tmp_path, TALLY_COLLECTOR_BATCH_MS="1000")
    proc = start_collector(gathering, tmp_path / "gather.log")
    try:
        # Alone: the first beacon's batch goes at once, so the second, 0.2 s later, is not in it
        # (a 1 s wait would have put both in one record).
        assert records_of(gathering, proc, [0, 0.2]) == [1, 1]
        with idle_connection(gathering):
            assert records_of(gathering, proc, [0.05 * i for i in range(5)]) == [5]  # ~0.2 s apart: one record
    finally:
        proc.stop()
    per_pass = make_env(broker, tmp_path, TALLY_COLLECTOR_BATCH_MS="0")
    proc = start_collector(per_pass, tmp_path / "per_pass.log")
    try:
        with idle_connection(per_pass):
            assert records_of(per_pass, proc, [0.05 * i for i in range(5)]) == [1] * 5
    finally:
        proc.stop()


def test_many_visitors_connecting_at_once_are_all_queued_for_accept(default):
    """The listen backlog holds a burst of new connections while the process is busy (here:
    stopped): with aiohttp's default of 128 the rest would be dropped and each of those
    visitors would wait for a SYN retransmit (1 s or more)."""
    import os
    import select
    import signal

    s, n = default.settings, 600
    socks: list[socket.socket] = []
    os.killpg(default.proc.popen.pid, signal.SIGSTOP)
    try:
        for _ in range(n):
            sock = socket.socket()
            sock.setblocking(False)
            sock.connect_ex((s.collector_host, s.collector_port))
            socks.append(sock)
        pending, deadline = set(socks), time.monotonic() + 3
        while pending and time.monotonic() < deadline:  # the kernel completes queued handshakes
            _, writable, _ = select.select([], list(pending)[:500], [], 0.1)
            pending -= {w for w in writable if w.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0}
        assert not pending, f"{len(pending)} of {n} connections not established"
    finally:
        for sock in socks:
            sock.close()
        os.killpg(default.proc.popen.pid, signal.SIGCONT)
    assert post_json(collect_url(s), {"site": "example.com", "path": "/after-burst"},
                     headers={"User-Agent": FIREFOX})[0] == 204
