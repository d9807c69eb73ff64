"""CPU per beacon of the collector's own work, in one process, against a real broker.

    .venv/bin/python bench/collector/handler_cpu.py [--bootstrap HOST:PORT] [--requests 200000]
        [--concurrency 64] [--clients many|one]

Serves beacons.lua's kind of requests (the same bodies, user agents, Origin and a fresh
public X-Forwarded-For per request behind a trusted 127.0.0.1 peer) straight to the
collector's routes (`Served.routes`), skipping the socket and aiohttp's HTTP parser
(the same for the minimal handler), with --concurrency requests in flight as wrk's
connections are. Each request waits for its micro-batch's real Kafka ack (acks=all),
so the Kafka client's threads are measured too. Reports the process's CPU time
(all threads, time.process_time) per accepted beacon, per chunk; requests are built
before each chunk is timed. Starts its own broker unless --bootstrap is given.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

import uvloop  # noqa: E402
from aiohttp import HttpVersion11, streams, web  # noqa: E402
from aiohttp.http_parser import RawRequestMessage  # noqa: E402
from multidict import CIMultiDict, CIMultiDictProxy  # noqa: E402
from per_client import addresses  # noqa: E402  (same directory: the bench's address mix)
from tally.producers.collector.app import Served  # noqa: E402
from yarl import URL  # noqa: E402

from tally.config import Settings  # noqa: E402
from tally.topics import ensure_topics  # noqa: E402

SECTIONS = ["", "/blog", "/docs", "/pricing", "/changelog", "/help"]
WORDS = ["kafka", "privacy", "getting-started", "api", "install", "teams", "billing", "faq"]
QUERIES = ["", "", "", "", "?utm_source=newsletter", "?ref=hn", "?page=2", "#install"]
REFS = ["null", "null", "null", '"https://www.google.com/"', '"https://news.ycombinator.com/"',
        '"https://duckduckgo.com/"']
EVENTS = ["pageview"] * 6 + ["signup", "download"]
UAS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
    "Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
]
class Transport:
    """What a request asks of its transport: the peer (a trusted proxy)."""

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 40000) if name == "peername" else default

    def is_closing(self) -> bool:
        return False


def templates(rng: random.Random) -> list[tuple[bytes, str]]:
    out = []
    for _ in range(512):
        path = rng.choice(SECTIONS)
        if rng.randrange(3):
            path += "/" + rng.choice(WORDS)
        body = (f'{{"site":"example.com","path":"{path or "/"}{rng.choice(QUERIES)}","referrer":{rng.choice(REFS)},'
                f'"event":"{rng.choice(EVENTS)}","props":{{}}}}').encode()
        out.append((body, rng.choice(UAS)))
    return out


def build(n: int, rng: random.Random, shapes: list[tuple[bytes, str]], clients: str, protocol: object) -> list:
    reqs = []
    loop = asyncio.get_running_loop()
    url = URL("/api/v1/collect")
    for _ in range(n):
        body, ua = rng.choice(shapes)
        payload = streams.StreamReader(protocol, 2 ** 16, loop=asyncio.get_running_loop())
        payload.feed_data(body)
        payload.feed_eof()
        xff = addresses(rng, 1)[0] if clients == "many" else "81.2.69.160"
        headers = CIMultiDict({"Host": "127.0.0.1", "Content-Type": "text/plain;charset=UTF-8", "User-Agent": ua,
                               "Origin": "https://example.com", "X-Forwarded-For": xff,
                               "Content-Length": str(len(body))})
        raw = tuple((k.encode(), v.encode()) for k, v in headers.items())
        message = RawRequestMessage("POST", "/api/v1/collect", HttpVersion11, CIMultiDictProxy(headers), raw,
                                    False, None, False, False, url)
        reqs.append(web.BaseRequest(message, payload, protocol, None, None, loop, client_max_size=8192))
    return reqs


async def chunk(routes: object, reqs: list, concurrency: int) -> tuple[float, float, int]:
    it = iter(reqs)
    ok = 0

    async def conn() -> None:
        nonlocal ok
        for req in it:
            resp = await routes(req)  # type: ignore[operator]
            ok += resp.status < 300

    t0, l0 = time.process_time(), time.thread_time()
    await asyncio.gather(*(conn() for _ in range(concurrency)))
    return time.process_time() - t0, time.thread_time() - l0, ok


async def main_async(args: argparse.Namespace, bootstrap: str, tmp: Path) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.update({"TALLY_KAFKA_BOOTSTRAP": bootstrap, "TALLY_STATE_DIR": str(tmp / "state"),
                "TALLY_TOPIC_PREFIX": f"hcpu{uuid.uuid4().hex[:6]}.", "TALLY_TOPIC_PARTITIONS": "4",
                "TALLY_ALLOWED_SITES": "example.com", "TALLY_TRUSTED_PROXIES": "127.0.0.1",
                "TALLY_LOG_LEVEL": "warning"})
    if args.clients == "one":
        env["TALLY_RATE_LIMIT_PER_SECOND"] = "0"
    settings = Settings.from_env(env)
    ensure_topics(settings)
    served = Served(settings)
    rng = random.Random(7)
    shapes = templates(rng)

    class Protocol:  # what StreamReader and BaseRequest ask of the connection's protocol
        _reading_paused = False
        ssl_context = None
        peername = ("127.0.0.1", 40000)  # the trusted proxy
        sockname = ("127.0.0.1", 8000)
        transport = Transport()

        def pause_reading(self, **_kw: object) -> None: ...
        def resume_reading(self, **_kw: object) -> None: ...

    protocol = Protocol()
    routes = served.routes
    if args.minimal:
        async def routes(request: web.BaseRequest) -> web.Response:  # bench/collector/baseline.py's handler
            await request.read()
            return web.Response(status=204)
    per_chunk: list[float] = []
    loop_chunk: list[float] = []
    async with served.running():
        for i in range(args.warmup_chunks + args.requests // args.chunk):
            reqs = build(args.chunk, rng, shapes, args.clients, protocol)
            cpu, loop_cpu, ok = await chunk(routes, reqs, args.concurrency)
            if ok != len(reqs):
                raise SystemExit(f"{len(reqs) - ok} requests not answered 2xx")
            if i >= args.warmup_chunks:
                per_chunk.append(cpu / ok * 1e6)
                loop_chunk.append(loop_cpu / ok * 1e6)
    return {"us_per_beacon_median": round(statistics.median(per_chunk), 2),
            "us_per_beacon_min": round(min(per_chunk), 2),
            "event_loop_us_per_beacon_median": round(statistics.median(loop_chunk), 2), "chunks": len(per_chunk), "clients": args.clients,
            "load": os.getloadavg()[0]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--bootstrap", default="")
    ap.add_argument("--requests", type=int, default=100_000)
    ap.add_argument("--chunk", type=int, default=5_000)
    ap.add_argument("--warmup-chunks", type=int, default=4)
    ap.add_argument("--concurrency", type=int, default=64)
    ap.add_argument("--minimal", action="store_true", help="the minimal handler instead (baseline.py's)")
    ap.add_argument("--clients", choices=["many", "one"], default="many")
    args = ap.parse_args()
    from tests.conftest import bench_kafka

    with tempfile.TemporaryDirectory(prefix="tally-handler-cpu-") as tmp_s, \
            bench_kafka(Path(tmp_s), args.bootstrap, heap_mb=512) as bootstrap:
        result = uvloop.run(main_async(args, bootstrap, Path(tmp_s)))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
