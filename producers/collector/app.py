"""The edge collector: accepts browser beacons, stamps them and forwards them to Kafka.

It stays thin (Snowplow style): parse the body once into a `BeaconRequest`,
validate it, apply the edge's privacy choices, pseudonymise the IP, forward.
Bots are *not* judged here: they get a 204 like everyone and the stream drops
them with a counted reason. The raw client IP never leaves this process: it
is replaced by a keyed BLAKE2b pseudonym (pseudonym.py), plus a datacenter flag
(datacenter.py). Nearly every beacon of real traffic comes from an address not
seen recently, so that per-client work is made cheap rather than cached.

Routes:
    POST /api/v1/collect   Tally's beacon  -> 204
    POST /api/event        Plausible's event API -> 202 "ok"
    OPTIONS on both        CORS preflight -> 204
    GET  /js/tally.js      the tracker script (and its extensions, scripts.py)
    GET  /healthz /readyz /metrics
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

import uvloop
from aiohttp import HttpVersion11, hdrs, web
from aiohttp.http_exceptions import HttpProcessingError
from tally.producers.collector import metrics
from tally.producers.collector.answers import (
    ACCEPTED_OK,
    NO_CONTENT,
    Prepared,
    RouteAnswer,
    cors_headers,
)
from tally.producers.collector.client_ip import ClientAddress
from tally.producers.collector.datacenter import DatacenterRanges
from tally.producers.collector.drops import EdgeDrops
from tally.producers.collector.edgekeys import EdgeKeys
from tally.producers.collector.encode import DictEncoder, PieceEncoder
from tally.producers.collector.forwarder import Forwarder
from tally.producers.collector.geo import country_of
from tally.producers.collector.logs import NoAddresses, ServerLog
from tally.producers.collector.minimise import Minimiser
from tally.producers.collector.parse import (
    BadBeacon,
    BeaconRequest,
    clean_text,
    json_body,
    plausible_beacon,
    tally_beacon,
)
from tally.producers.collector.pseudonym import Pseudonyms
from tally.producers.collector.ratelimit import RateLimiter
from tally.producers.collector.scripts import SCRIPTS, script_handler
from tally.schemas.reasons import DropReason

from tally.config import Settings
from tally.secrets import file_secret

log = logging.getLogger(__name__)

MAX_BODY = 8 * 1024
RETRY_AFTER_SECONDS = "30"

# A handler's answer: aiohttp's response, or bytes made ahead (answers.py).
Handler = Callable[[web.BaseRequest], Awaitable[web.StreamResponse | Prepared]]
Parse = Callable[[dict[str, Any], frozenset[str]], BeaconRequest]


def _bad(detail: str, status: int = 400) -> web.Response:
    return web.json_response({"detail": detail}, status=status)


class Collector:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        secret = settings.edge_secret.encode() or file_secret(settings.state_dir / "secrets" / "edge.key")
        self.pseudonyms = Pseudonyms(secret)
        self.datacenters = DatacenterRanges()
        self.edge_keys = EdgeKeys(settings, secret)
        self.allowed = frozenset(settings.allowed_sites)
        self.minimiser = Minimiser(settings)
        self.addresses = ClientAddress(settings.trusted_proxies)
        self.limiter = (RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst)
                        if settings.rate_limit_per_second > 0 else None)
        self.forwarder: Forwarder | None = None
        self.encoder: PieceEncoder | DictEncoder | None = None
        self.drops: EdgeDrops | None = None

    def client(self, peer: str | None, forwarded_for: tuple[str, ...],
               site_key: bytes) -> tuple[str, bytes, bool, str]:
        """(IP pseudonym on this site in this period, rate-limit key, datacenter flag, country)
        of the client behind this peer and XFF chain. The raw address lives only in this call."""
        client = self.addresses.client(peer, forwarded_for)
        pseudonym, limit_key = self.pseudonyms.of(client, site_key, self.limiter is not None)
        if client is None:
            return pseudonym, limit_key, False, ""
        return pseudonym, limit_key, self.datacenters.contains(*client), country_of(client[2])

    def ip_pseudonym(self, ip: str, site_key: bytes) -> str:
        return self.pseudonyms.text(ip, site_key)

    # --- beacon routes ---------------------------------------------------------

    def beacon_route(self, route: str, parse: Parse, ok: RouteAnswer, edge: Edge) -> Handler:
        """The handler of a beacon route: read, parse, forward, wait until durable, answer.

        One coroutine from body to answer, with the edge's CORS and counting called
        inline rather than through `Edge.guard`: every coroutine between the request's
        task and the durability future is suspended and resumed once more per request,
        which showed in profiles under load. The answer's bytes are made ahead
        (answers.py).
        """
        allowed, finish, origin, counts = self.allowed, edge.finish, edge.origin, edge.counts
        answer, key = ok.answer, (route, ok.status)

        async def beacon(request: web.BaseRequest) -> web.StreamResponse | Prepared:
            body = request.content
            try:
                # A beacon's body nearly always arrives with its headers: then it is taken
                # as it is, without the read coroutine and its awaits.
                if body.is_eof() and body.total_bytes <= MAX_BODY:
                    raw = body.read_nowait()
                else:
                    raw = await request.read()
            except READ_ERRORS as exc:
                return finish(route, request, read_error(request, exc))
            try:
                parsed = parse(json_body(raw), allowed)
            except BadBeacon as exc:
                return finish(route, request, _bad(str(exc)))
            durable = self._accept(request, parsed)
            if durable is not None and not await durable:
                return finish(route, request, self._spool_full(parsed))
            counts[key] = counts.get(key, 0) + 1  # RequestCounter.inc, inlined (hot path)
            return answer(request, origin(request))

        return beacon

    def _accept(self, request: web.BaseRequest, beacon: BeaconRequest) -> asyncio.Future[bool] | None:
        """Forward the beacon: a future that tells whether it became durable, or None when
        it is dropped here with a counted reason (answered like an accepted one)."""
        now_ms = int(time.time() * 1000)
        headers = request.headers
        s = self.settings
        assert self.drops is not None and self.forwarder is not None and self.encoder is not None
        # Privacy choices first: a visitor who opted out costs nothing more.
        if s.honor_gpc and headers.get("Sec-GPC", "").strip() == "1":
            self.drops.add(beacon.site, now_ms, DropReason.GPC)
            return None
        if s.honor_dnt and headers.get("DNT", "").strip() == "1":
            self.drops.add(beacon.site, now_ms, DropReason.DNT)
            return None
        user_agent = clean_text(headers.get(hdrs.USER_AGENT, ""))
        if s.drop_empty_ua and not user_agent.strip():
            self.drops.add(beacon.site, now_ms, DropReason.EMPTY_USER_AGENT)
            return None
        site_key, new_period = self.edge_keys.site_key(now_ms, beacon.site)
        if new_period:  # the old period's prepared keys are not kept (forward secrecy)
            self.pseudonyms.forget()
        xff = tuple(headers.getall(hdrs.X_FORWARDED_FOR, ())) if self.addresses.trusted else ()
        pseudonym, limit_key, datacenter, country = self.client(request.remote, xff, site_key)
        if self.limiter is not None and not self.limiter.allow(limit_key):
            self.drops.add(beacon.site, now_ms, DropReason.RATE_LIMITED)
            return None
        # Minimisation (minimise.py): only what may be kept goes on to Kafka.
        m = self.minimiser
        props = beacon.props
        if props:
            props, dropped = m.props(beacon.site, props)
            for reason, n in dropped.items():
                self.drops.add(beacon.site, now_ms, reason, n)
        # The beacon's Avro bytes (event_id minted here), or a dict when the fast encoder is off.
        item = self.encoder.item(now_ms, beacon.site, m.path(beacon.path), m.referrer(beacon.referrer),
                                 beacon.event, props, user_agent, pseudonym, datacenter, country)
        return self.forwarder.submit(item)

    def _spool_full(self, beacon: BeaconRequest) -> web.Response:
        assert self.drops is not None
        self.drops.add(beacon.site, int(time.time() * 1000), DropReason.SPOOL_FULL)
        return web.json_response({"detail": "broker unreachable and spool full; retry later"},
                                 status=503, headers={"Retry-After": RETRY_AFTER_SECONDS})

    # --- operations ------------------------------------------------------------

    async def readyz(self, _request: web.BaseRequest) -> web.Response:
        assert self.forwarder is not None
        ready, detail = self.forwarder.ready()
        return web.json_response({"ready": ready, **detail}, status=200 if ready else 503)


async def healthz(_request: web.BaseRequest) -> web.Response:
    return web.json_response({"status": "ok"})




# --- CORS, request metrics and error answers: what every response gets -------------------
# Applied per route (Edge.guard, or Edge.finish inside the beacon handlers) rather than
# as an aiohttp middleware: a middleware costs two more coroutine calls and a route
# lookup per request, and with no middleware aiohttp skips its own per-request
# middleware machinery as well. Unknown paths and wrong methods reach guarded
# catch-all handlers (see Routes), so they get the same JSON and CORS.

PREFLIGHT_HEADERS = {
    "Access-Control-Allow-Methods": "POST, OPTIONS",
    "Access-Control-Allow-Headers": "Content-Type",
    "Access-Control-Max-Age": "86400",
}
# Raised while a request is handled and the client's fault: aiohttp's 404/405/413, and a
# body that broke while being read (a bad Content-Encoding, a truncated chunk).
READ_ERRORS = (web.HTTPException, web.RequestPayloadError, HttpProcessingError)


class Edge:
    """CORS headers and a count by route and status on every response."""

    def __init__(self, settings: Settings, requests: metrics.RequestCounter) -> None:
        self.any_origin = "*" in settings.cors_origins
        self.origins = frozenset(o.rstrip("/") for o in settings.cors_origins)
        self.counts = requests.counts

    def origin(self, request: web.BaseRequest) -> str | None:
        """The request's CORS origin: "*" when any is allowed, its Origin when that one is,
        else None (answers.cors_headers)."""
        if self.any_origin:
            return "*"
        origin = request.headers.get(ORIGIN, "")
        return origin if origin.lower() in self.origins else None

    def cors(self, request: web.BaseRequest) -> Mapping[str, str]:
        """The CORS headers of the answer to this request."""
        return cors_headers(self.origin(request))

    def finish(self, route: str, request: web.BaseRequest, response: web.StreamResponse) -> web.StreamResponse:
        response.headers.update(self.cors(request))
        key = (route, response.status)
        self.counts[key] = self.counts.get(key, 0) + 1  # RequestCounter.inc, inlined (hot path)
        return response

    def guard(self, route: str, handler: Handler) -> Handler:
        """The handler with finish() applied, and errors answered in the collector's JSON shape."""
        async def guarded(request: web.BaseRequest) -> web.StreamResponse:
            try:
                response = await handler(request)
            except READ_ERRORS as exc:
                response = read_error(request, exc)
            return self.finish(route, request, response)

        return guarded


def read_error(request: web.BaseRequest, exc: Exception) -> web.Response:
    """One of READ_ERRORS as the collector's JSON answer: a 4xx, never a 500."""
    if not isinstance(exc, web.HTTPException):
        return _bad("body could not be read (bad encoding or framing)")
    status = exc.status
    if status == 413:
        detail = f"body is larger than {MAX_BODY} bytes"
    elif status == 405:
        detail = f"method {clean_text(request.method, 20)} is not allowed here"
    elif status == 404:
        detail = "no such endpoint"
    else:
        detail = exc.reason
    response = _bad(detail, status)
    if "Allow" in exc.headers:
        response.headers["Allow"] = exc.headers["Allow"]
    return response


def method_not_allowed(allowed: set[str]) -> Handler:
    async def handler(request: web.BaseRequest) -> web.Response:
        raise web.HTTPMethodNotAllowed(request.method, allowed)

    return handler


async def not_found(_request: web.BaseRequest) -> web.Response:
    raise web.HTTPNotFound()


async def preflight(_request: web.BaseRequest) -> web.Response:
    return web.Response(status=204, headers=PREFLIGHT_HEADERS)


class Routes:
    """The collector's routes on aiohttp's low-level server (`web.Server`): a dict from
    path to {method: handler}, looked up once per request.

    The beacon routes are the whole load, and an `Application` costs them more than
    their answer does: the router's resolve coroutine, a match-info object frozen per
    request, the middleware check, `Request` over `BaseRequest`. Here a request
    costs one dict lookup, and the handler's coroutine is handed to aiohttp as is
    (no coroutine in between to suspend and resume around the Kafka ack).
    Unknown paths and wrong methods get the collector's JSON 404/405 with CORS, and
    `Expect: 100-continue` is answered as `Application` does.
    """

    def __init__(self, guard: Callable[[str, Handler], Handler]) -> None:
        self._table: dict[str, tuple[dict[str, Handler], Handler]] = {}
        self._not_found = guard("unmatched", not_found)
        self._guard = guard

    def add(self, path: str, methods: dict[str, Handler]) -> None:
        table = dict(methods)
        if "GET" in table:
            table["HEAD"] = table["GET"]
        self._table[path] = table, self._guard("unmatched", method_not_allowed(set(table)))

    def __call__(self, request: web.BaseRequest) -> Awaitable[web.StreamResponse | Prepared]:
        # The path as sent is nearly always the route's own (no query, no escapes): looked up
        # as is, it skips yarl's decoding; anything else is decoded as before.
        table = self._table
        entry = table.get(request.raw_path) or table.get(request.rel_url.path_safe)
        handler = self._not_found if entry is None else entry[0].get(request.method) or entry[1]
        if request.headers.get(EXPECT):
            return expect_then(handler, request)
        return handler(request)


EXPECT, ORIGIN = hdrs.EXPECT, hdrs.ORIGIN  # istr header names: multidict skips case-folding them per lookup


async def expect_then(handler: Handler, request: web.BaseRequest) -> web.StreamResponse | Prepared:
    """`Expect: 100-continue` answered before the handler reads the body (what aiohttp's
    Application does); any other expectation is a 417."""
    if request.version == HttpVersion11:
        if request.headers[EXPECT].lower() != "100-continue":
            return _bad("Expect: only 100-continue is supported", 417)
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
    return await handler(request)


class Served:
    """The collector's routes, and what must start before they serve and stop after."""

    def __init__(self, settings: Settings, worker_index: int = 0) -> None:
        self.settings, self.worker_index = settings, worker_index
        self.collector = collector = Collector(settings)
        self.requests = requests = metrics.RequestCounter()
        edge = Edge(settings, requests)
        guard = edge.guard
        collect, event = "/api/v1/collect", "/api/event"

        async def metrics_page(_request: web.BaseRequest) -> web.Response:
            requests.sync()
            body, content_type = metrics.render()
            return web.Response(body=body, headers={"Content-Type": content_type})

        self.routes = routes = Routes(guard)
        # Each route's handlers, all answering through edge.finish (the beacon routes call it
        # themselves; see Collector.beacon_route).
        routes.add(collect, {"POST": collector.beacon_route(collect, tally_beacon, NO_CONTENT, edge),
                             "OPTIONS": guard(collect, preflight)})
        # Plausible answers its event API with 202 "ok".
        routes.add(event, {"POST": collector.beacon_route(event, plausible_beacon, ACCEPTED_OK, edge),
                           "OPTIONS": guard(event, preflight)})
        for name in SCRIPTS:
            routes.add(f"/js/{name}", {"GET": guard(f"/js/{name}", script_handler(name))})
        routes.add("/healthz", {"GET": guard("/healthz", healthz)})
        routes.add("/readyz", {"GET": guard("/readyz", collector.readyz)})
        routes.add("/metrics", {"GET": guard("/metrics", metrics_page)})

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[None]:
        """Edge keys, the forwarder and the drops topic up before the first request; closed
        after the last one has been answered."""
        settings, collector, requests = self.settings, self.collector, self.requests
        loop = asyncio.get_running_loop()
        # The period's agreed key before the first beacon, if the broker answers soon; else
        # the start goes on and the refresh finishes in its thread (edgekeys.py: local key).
        first = loop.run_in_executor(None, collector.edge_keys.refresh)
        try:
            await asyncio.wait_for(asyncio.shield(first), 10.0)
        except TimeoutError:
            log.warning("edge keys: topic not readable yet; starting with a local key")

        async def refresh_edge_keys() -> None:
            while True:
                await asyncio.sleep(30.0)
                try:
                    await loop.run_in_executor(None, collector.edge_keys.refresh)
                except Exception:  # a broker hiccup: the next pass retries
                    log.exception("edge keys: refresh failed")

        refresher = asyncio.create_task(refresh_edge_keys())
        fwd = Forwarder(settings, self.worker_index)
        await fwd.start()
        edge_drops = EdgeDrops(settings, lambda: fwd.link.producer)  # the current one (kafka_link.py)
        edge_drops.start()
        collector.forwarder, collector.encoder, collector.drops = fwd, fwd.encoder, edge_drops

        async def sync_metrics() -> None:
            while True:
                await asyncio.sleep(1.0)
                requests.sync()

        syncer = asyncio.create_task(sync_metrics())
        # Everything allocated at start (modules, iporigin's tables, schemas) is never
        # garbage: freezing it keeps the collector's full GC passes short, and so the
        # latency spikes they cause under load.
        gc.freeze()
        # Requests waiting for their Kafka ack are live when a young-generation pass runs,
        # so each pass scans the whole in-flight set; at 700 allocations per pass that was
        # ~2% of the CPU under load. 10x fewer passes, same objects freed.
        gc.set_threshold(7000, 10, 10)
        try:
            yield
        finally:
            syncer.cancel()
            refresher.cancel()
            collector.edge_keys.close()
            requests.sync()
            await edge_drops.close()
            await fwd.close()


class Server(web.Server):
    """aiohttp's low-level server, telling how many client connections it has open (the
    forwarder's batching asks, see forwarder.Forwarder.submit)."""

    def open_connections(self) -> int:
        return len(self._connections)


# Connections waiting to be accepted. aiohttp's 128 overflows when many visitors connect
# at once (1024 new connections measured 647 listen overflows and 393 SYN retransmits, each
# a visitor waiting 1 s or more); the kernel caps it at net.core.somaxconn.
LISTEN_BACKLOG = 1024


async def serve(settings: Settings, worker_index: int = 0, reuse_port: bool = False) -> None:
    """Serve until SIGTERM or SIGINT, then stop listening, answer the requests in flight
    (at most 10 s) and close the forwarder."""
    served = Served(settings, worker_index)
    loop = asyncio.get_running_loop()

    def request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.BaseRequest:
        """aiohttp's plain request object, with the collector's body limit."""
        return web.BaseRequest(message, payload, protocol, writer, task, loop, client_max_size=MAX_BODY)

    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with served.running():
        # logger: aiohttp's server lines without the client's address (logs.py).
        # access_log=None: aiohttp's access log line starts with the client IP, and
        # Tally keeps raw IPs out of every log; /metrics counts requests instead.
        # keepalive_timeout: web.run_app's 75 s (the handler's own default is an hour).
        server = Server(served.routes, request_factory=request,
                        logger=ServerLog(), access_log=None, keepalive_timeout=75.0)
        assert served.collector.forwarder is not None
        served.collector.forwarder.connections = server.open_connections
        runner = web.ServerRunner(server, shutdown_timeout=10)
        await runner.setup()
        try:
            await web.TCPSite(runner, settings.collector_host, settings.collector_port,
                              reuse_port=reuse_port or None, backlog=LISTEN_BACKLOG).start()
            await stop.wait()
        finally:
            await runner.cleanup()


def run(settings: Settings, worker_index: int = 0, reuse_port: bool = False) -> None:
    for handler in logging.getLogger().handlers:
        handler.addFilter(NoAddresses())
    # uvloop: the same asyncio API on libuv; measured ~14% fewer instructions per request
    # (callgrind, same wrk load). bench/collector's minimal handler runs on it too.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(settings, worker_index, reuse_port))
