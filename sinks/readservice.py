"""The sink's read service: how everyone else reaches the embedded warehouse.

chDB allows one process per data directory and the sink owns it, so `tally
query`, `tally reconcile`, `tally api-key` and the dashboard come here. Who can
reach what:

- Unix socket `<state>/run/warehouse.sock`, mode 0600 in a 0700 directory: only
  the sink's own OS user. No web page can send to it, no other local user can
  open it. Serves guarded SQL (`POST /v1/sql`) and the typed operations on API keys,
  dashboard accounts and goals.
  Next to it, `warehouse-sql.sock` (sinks/sqlsocket.py, the same mode) serves the
  dashboard's guarded SQL and key lookups as length-prefixed frames.
- TCP `TALLY_QUERY_HOST:TALLY_QUERY_PORT` (loopback): `/healthz` and `/metrics`
  only. Analysts' SQL is served there too only when TALLY_QUERY_TOKEN is set,
  and then only with `Authorization: Bearer <token>`, a Host header from
  TALLY_QUERY_ALLOWED_HOSTS, no Origin header and a JSON body.

Every query passes the SQL guard (sinks/sqlguard.py) and runs on a pool of
TALLY_ANALYST_CONCURRENCY threads, each with its own read-only session carrying
the analyst limits, at a lower CPU priority: the ingestion thread never waits for
an analyst query (no shared lock), and the engine cuts off a query that runs too
long, uses too much memory, or reads or returns too much.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from tally.sinks import keystore
from tally.sinks.accountstore import account_routes
from tally.sinks.analystpool import AnalystPool, Answer, KeyOps, error
from tally.sinks.goalstore import goal_routes
from tally.sinks.query import FORMATS
from tally.sinks.sqlguard import Guard
from tally.sinks.sqlsocket import SqlSocket

from tally.config import Settings
from tally.secrets import private_dir

log = logging.getLogger(__name__)

MAX_REQUEST_BYTES = 512 * 1024
async def _json_body(request: web.Request) -> dict[str, Any]:
    if request.content_type != "application/json":
        raise web.HTTPUnsupportedMediaType(text=json.dumps({"error": "the body must be JSON (Content-Type: application/json)"}),
                                           content_type="application/json")
    try:
        body = orjson.loads(await request.read())
    except ValueError:
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body is not valid JSON"}),
                                 content_type="application/json") from None
    if not isinstance(body, dict):
        raise web.HTTPBadRequest(text=json.dumps({"error": "the body must be a JSON object"}),
                                 content_type="application/json")
    return body


def _reply(answer: Answer) -> web.Response:
    return web.Response(status=answer.status, body=answer.body, content_type=answer.content_type.split(";")[0])


def sql_handler(pool: AnalystPool) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handle(request: web.Request) -> web.Response:
        body = await _json_body(request)
        sql, fmt, params = body.get("sql"), body.get("format", "JSONCompact"), body.get("params") or {}
        if not isinstance(sql, str):
            return _reply(error(400, "`sql` must be a string"))
        if fmt not in FORMATS:
            return _reply(error(400, f"`format` must be one of {', '.join(FORMATS)}, not {fmt!r}"))
        if not isinstance(params, dict):
            return _reply(error(400, "`params` must be an object of query parameters"))
        return _reply(await pool.run(lambda: pool.sql(sql, fmt, params)))

    return handle


def key_routes(app: web.Application, keys: KeyOps) -> None:
    run = keys.run

    async def create(request: web.Request) -> web.Response:
        body = await _json_body(request)
        try:
            record = keystore.KeyRecord.from_json(body)
        except (KeyError, TypeError, ValueError) as exc:
            return _reply(error(400, f"bad key record: {exc}"))
        if not record.key_id or len(record.key_hash) != 64 or not (record.sites or record.tenants):
            return _reply(error(400, "a key needs key_id, a SHA-256 key_hash and at least one site or tenant"))
        await run(lambda c: keystore.insert(c, record))
        return web.json_response(record.public(), status=201)

    async def listing(request: web.Request) -> web.Response:
        records = await run(keystore.all_keys)
        return web.json_response([r.public() for r in records])

    async def find(request: web.Request) -> web.Response:
        record = await run(lambda c: keystore.find(c, request.match_info["key_id"]))
        if record is None:
            return _reply(error(404, "no such key"))
        return web.json_response(record.to_json())

    async def revoke(request: web.Request) -> web.Response:
        record = await run(lambda c: keystore.revoke(c, request.match_info["key_id"]))
        if record is None:
            return _reply(error(404, "no such key"))
        return web.json_response(record.public())

    app.router.add_get("/v1/keys", listing)
    app.router.add_post("/v1/keys", create)
    app.router.add_get("/v1/keys/{key_id}", find)
    app.router.add_post("/v1/keys/{key_id}/revoke", revoke)


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})


def host_of(header: str) -> str:
    """The host part of a Host header, without the port ("[::1]:8124" -> "[::1]")."""
    if header.startswith("["):
        return header.split("]", 1)[0] + "]"
    return header.rsplit(":", 1)[0] if header.count(":") == 1 else header


def remote_guard(settings: Settings) -> Callable:
    """Who may send SQL over TCP: bearer token, allowed Host (no DNS rebinding), no Origin
    (no web page), JSON only (no `text/plain` simple request)."""
    token = settings.query_token.encode()

    @web.middleware
    async def guard(request: web.Request, handler: Callable) -> web.StreamResponse:
        if request.path in ("/healthz", "/metrics"):
            return await handler(request)
        if host_of(request.headers.get("Host", "")).lower() not in settings.query_allowed_hosts:
            return _reply(error(403, "Host header not in TALLY_QUERY_ALLOWED_HOSTS"))
        if "Origin" in request.headers:
            return _reply(error(403, "requests from web pages (with an Origin header) are refused"))
        auth = request.headers.get("Authorization", "")
        if not auth.startswith("Bearer ") or not hmac.compare_digest(auth[7:].strip().encode(), token):
            return _reply(error(401, "missing or wrong bearer token (TALLY_QUERY_TOKEN)"))
        return await handler(request)

    return guard


class ReadService:
    """The socket and TCP servers, on an event loop of their own in a background thread."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = AnalystPool(settings, Guard()) if settings.embedded_clickhouse else None
        self.keys = KeyOps(settings) if settings.embedded_clickhouse else None
        self.loop = uvloop.new_event_loop()
        self.runners: list[web.AppRunner] = []
        self.ready = threading.Event()
        self.failed: BaseException | None = None
        self.thread = threading.Thread(target=self._serve, name="read-service", daemon=True)
        self.sql_socket: Any = None  # sinks/sqlsocket.py, embedded mode

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(60)
        if self.failed is not None:
            raise self.failed

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_until_complete(self._start())
        except BaseException as exc:  # reported to start()
            self.failed = exc
            self.ready.set()
            return
        self.ready.set()
        self.loop.run_forever()

    async def _start(self) -> None:
        s = self.settings
        tcp = web.Application(client_max_size=MAX_REQUEST_BYTES)
        tcp.router.add_get("/healthz", healthz)
        tcp.router.add_get("/metrics", metrics)
        if s.query_token and self.pool is not None:
            tcp.middlewares.append(remote_guard(s))
            tcp.router.add_post("/v1/sql", sql_handler(self.pool))
        await self._site(tcp, lambda r: web.TCPSite(r, s.query_host, s.query_port))
        if self.pool is not None:
            if len(str(s.socket_path).encode()) > 107:  # the kernel's limit for a socket's path
                raise ValueError(f"the warehouse socket path {s.socket_path} is longer than 107 bytes: "
                                 "use a shorter TALLY_STATE_DIR")
            private_dir(s.state_dir)
            private_dir(s.run_dir)
            sock = web.Application(client_max_size=MAX_REQUEST_BYTES)
            sock.router.add_get("/healthz", healthz)
            sock.router.add_get("/metrics", metrics)
            sock.router.add_post("/v1/sql", sql_handler(self.pool))
            key_routes(sock, self.keys)
            account_routes(sock, self.keys.run)
            goal_routes(sock, self.keys.run)
            # A socket left by a killed sink: this process holds the warehouse lock, so no
            # other sink is listening on it.
            s.socket_path.unlink(missing_ok=True)
            await self._site(sock, lambda r: web.UnixSite(r, str(s.socket_path)))
            os.chmod(s.socket_path, 0o600)
            self.sql_socket = SqlSocket(s.sql_socket_path, self.pool, self.keys)
            self.sql_socket.start()

    async def _site(self, app: web.Application, site: Callable[[web.AppRunner], web.BaseSite]) -> None:
        runner = web.AppRunner(app, access_log=None)  # no client addresses in logs
        await runner.setup()
        await site(runner).start()
        self.runners.append(runner)

    def stop(self) -> None:
        async def cleanup() -> None:
            for runner in self.runners:
                await runner.cleanup()

        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(cleanup(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        if self.sql_socket is not None:
            self.sql_socket.stop()
        if self.pool is not None:
            self.pool.shutdown()
            self.keys.executor.shutdown(wait=False, cancel_futures=True)
            self.settings.socket_path.unlink(missing_ok=True)
