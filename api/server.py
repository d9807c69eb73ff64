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

import uvloop
from aiohttp import web
from tally.api import adoption, catalog, stats
from tally.api.handler import CLOCK, KEYS, SETTINGS, WAREHOUSE, ApiError, answer, failure
from tally.api.keys import KeyChecker
from tally.api.warehouse import Unavailable, Warehouse, open_warehouse
from tally.api.web import app as web_dashboard
from tally.sinks.readservice import host_of

from tally.config import Settings

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024


def guard(settings: Settings) -> Callable:
    """The one middleware: the Host check (not on /healthz), then errors as JSON."""
    allowed = settings.dashboard_allowed_hosts

    @web.middleware
    async def check(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
        host = host_of(request.headers.get("Host", "")).lower()
        if host not in allowed and request.path != "/healthz":
            return failure(403, f"Host {host!r} is not one of TALLY_DASHBOARD_ALLOWED_HOSTS")
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

    return check


async def healthz(request: web.Request) -> web.Response:
    return answer({"status": "ok"})


def build_app(settings: Settings, warehouse: Warehouse, clock: Callable[[], datetime] | None = None) -> web.Application:
    app = web.Application(middlewares=[guard(settings)], client_max_size=MAX_BODY)
    app[SETTINGS] = settings
    app[WAREHOUSE] = warehouse
    app[KEYS] = KeyChecker(warehouse.find_key, settings.api_rate_limit_per_hour, settings.api_rate_limit_burst)
    app[CLOCK] = clock or (lambda: datetime.now(UTC))
    app.router.add_get("/healthz", healthz)
    stats.setup(app)
    adoption.setup(app)
    catalog.setup(app)
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
