"""`tally dashboard`: the Stats API and the web dashboard (api/web) on 127.0.0.1:8001.

Every request passes, in order: the Host check (TALLY_DASHBOARD_ALLOWED_HOSTS,
so a DNS-rebinding page cannot reach it), then, on /api/*, the bearer key (401
without a valid one, 429 past its rate limit) and its scope (403 for a site or
tenant the key does not cover). Errors are JSON `{"error": ...}` with Plausible's
status codes. Each area adds its routes from its own module (`setup(app)`).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import orjson
import uvloop
from aiohttp import web
from tally.api.keys import KeyChecker
from tally.api.warehouse import QueryFailed, Unavailable, Warehouse, open_warehouse
from tally.sinks.keystore import KeyRecord
from tally.sinks.readservice import host_of

from tally.config import Settings

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024
SETTINGS = web.AppKey("settings", Settings)
WAREHOUSE = web.AppKey("warehouse", Warehouse)
KEYS = web.AppKey("keys", KeyChecker)
CLOCK = web.AppKey("clock", Callable)
SESSION_SCOPE = "tally.scope"  # a browser's scope (session or shared link), set by api/web


class ApiError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def answer(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


def failure(status: int, message: str) -> web.Response:
    return answer({"error": message}, status)


@web.middleware
async def errors(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return failure(exc.status, exc.message)
    except Unavailable as exc:
        return failure(503, f"the warehouse is unavailable: {exc}")
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return failure(exc.status, exc.reason)


def host_check(settings: Settings) -> Callable:
    @web.middleware
    async def check(request: web.Request, handler: Callable) -> web.StreamResponse:
        host = host_of(request.headers.get("Host", "")).lower()
        if host not in settings.dashboard_allowed_hosts and request.path != "/healthz":
            return failure(403, f"Host {host!r} is not one of TALLY_DASHBOARD_ALLOWED_HOSTS")
        return await handler(request)

    return check


async def authorize(request: web.Request) -> KeyRecord:
    if (scope := request.get(SESSION_SCOPE)) is not None:
        return scope
    verdict = await request.app[KEYS].check(request.headers.get("Authorization"))
    if verdict.status != 200:
        raise ApiError(verdict.status, verdict.message)
    return verdict.record


def require_site(key: KeyRecord, site: Any) -> str:
    if not isinstance(site, str) or not site:
        raise ApiError(400, "Missing site ID. Please provide the required site_id parameter with your request.")
    if site not in key.sites:
        raise ApiError(403, f"This API key has no access to site_id `{site}`.")
    return site


async def json_body(request: web.Request) -> Any:
    if request.content_type != "application/json":
        raise ApiError(415, "Content-Type must be application/json")
    try:
        return orjson.loads(await request.read())
    except ValueError:
        raise ApiError(400, "#: the body is not valid JSON") from None


async def rows(request: web.Request, sql: Any) -> list[list[Any]]:
    try:
        return await request.app[WAREHOUSE].rows(sql)
    except QueryFailed as exc:
        raise ApiError(400, f"the query failed: {exc}") from None


def now(request: web.Request) -> datetime:
    return request.app[CLOCK]()


async def healthz(request: web.Request) -> web.Response:
    return answer({"status": "ok"})


def build_app(settings: Settings, warehouse: Warehouse, clock: Callable[[], datetime] | None = None) -> web.Application:
    from tally.api import adoption, stats
    from tally.api.web import app as web_dashboard

    app = web.Application(middlewares=[errors, host_check(settings)], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[WAREHOUSE] = warehouse
    app[KEYS] = KeyChecker(warehouse.find_key, settings.api_rate_limit_per_hour, settings.api_rate_limit_burst)
    app[CLOCK] = clock or (lambda: datetime.now(UTC))
    app.router.add_get("/healthz", healthz)
    stats.setup(app)
    adoption.setup(app)
    web_dashboard.setup(app)

    async def close(app: web.Application) -> None:
        await warehouse.close()

    app.on_cleanup.append(close)
    return app


def run(settings: Settings) -> None:
    """Serve until SIGINT/SIGTERM. LookupError: server mode without the dashboard's user."""
    app = build_app(settings, open_warehouse(settings))
    log.info("Stats API and dashboard on http://%s:%d", settings.dashboard_host, settings.dashboard_port)
    web.run_app(app, host=settings.dashboard_host, port=settings.dashboard_port, access_log=None, print=None,
                loop=uvloop.new_event_loop())
