"""Request-performance middleware (seed 001's API performance tracking).

For ASGI (Starlette, FastAPI...), WSGI (Flask, Django...) and aiohttp apps. It
reports, through the product SDK, catalog events for:
- requests slower than 1 s (api.request_slow) and, separately, 2 s
  (api.request_very_slow);
- server errors: a 5xx response or an unhandled exception (api.request_failed).

Each event carries the route *template* (`/tickets/{id}`), never the raw URL or
query string, the method, the status class and a duration bucket. Requests that
are neither slow nor failed cost two clock reads and a comparison (the
benchmark bench/producer.py measures it); reporting itself is a non-blocking
track() call. With TALLY_DISABLED=1 the middleware returns the app unchanged.

Events need a tenant scope: pass `scope=("tenant", "workspace")` for a fixed
one, or a function of the request (ASGI scope, WSGI environ or aiohttp request)
returning (tenant_id, workspace_id), or None to skip that request.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from time import perf_counter
from typing import Any

from tally.producers.sdk.client import Actor, Client
from tally.schemas.catalog import METHODS
from tally.schemas.reasons import DropReason

Scope = tuple[str, str] | Callable[[Any], tuple[str, str] | None]

UNMATCHED = "/*"
_METHODS = frozenset(METHODS)
_SNAKE = re.compile(r"(?<!^)(?=[A-Z])")


def duration_bucket(seconds: float) -> str:
    if seconds < 1:
        return "<1s"
    if seconds < 2:
        return "1s-2s"
    if seconds < 5:
        return "2s-5s"
    if seconds < 10:
        return "5s-10s"
    return "10s+"


def error_type(exc: BaseException | None) -> str:
    """ValueError -> value_error: a canonical type string, never the message."""
    if exc is None:
        return "http_5xx"
    return _SNAKE.sub("_", type(exc).__name__).lower()[:48] or "error"


class Reporter:
    """Turns one finished request into catalog events (framework-independent)."""

    def __init__(self, client: Client, scope: Scope, *, slow_after: float = 1.0,
                 very_slow_after: float = 2.0, actor: Actor | None = None) -> None:
        self.client = client
        self.scope = scope
        self.slow_after = slow_after
        self.very_slow_after = very_slow_after
        self.actor = actor or Actor("service", client.app or "")

    def report(self, request: Any, method: str, route: str, status: int, seconds: float,
               exc: BaseException | None = None) -> None:
        """Called only for requests that are slow or failed; never raises."""
        try:
            where = self.scope(request) if callable(self.scope) else self.scope
            if where is None:
                return
            tenant_id, workspace_id = where
            method = method.upper() if method.upper() in _METHODS else "OTHER"
            meta = {"route": route or UNMATCHED, "method": method,
                    "status_class": f"{min(max(status // 100, 1), 5)}xx",
                    "duration_bucket": duration_bucket(seconds)}
            track = self.client.track
            actor = self.actor
            if status >= 500 or exc is not None:
                track("api.request_failed", tenant_id=tenant_id, workspace_id=workspace_id,
                      actor=actor, metadata={**meta, "error_type": error_type(exc)})
            if seconds >= self.slow_after:
                track("api.request_slow", tenant_id=tenant_id, workspace_id=workspace_id,
                      actor=actor, metadata=meta)
            if seconds >= self.very_slow_after:
                track("api.request_very_slow", tenant_id=tenant_id, workspace_id=workspace_id,
                      actor=actor, metadata=meta)
        except Exception:  # reporting must never break the host's request
            self.client.count_drop(DropReason.MIDDLEWARE_ERROR, "could not report a request")


# --- ASGI ------------------------------------------------------------------------

def _asgi_route(scope: dict) -> str:
    route = scope.get("route")  # Starlette/FastAPI put the matched route here
    if route is None:
        return UNMATCHED
    if isinstance(route, str):
        return route
    return getattr(route, "path_format", None) or getattr(route, "path", None) or UNMATCHED


class TallyASGIMiddleware:
    """ASGI middleware: `app = TallyASGIMiddleware(app, client, scope=...)`."""

    def __init__(self, app: Any, client: Client, scope: Scope, *,
                 route_of: Callable[[dict], str] = _asgi_route, **kw: Any) -> None:
        self.app = app
        self.reporter = Reporter(client, scope, **kw)
        self.route_of = route_of
        self.slow = self.reporter.slow_after

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0

        async def send_status(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        t0 = perf_counter()
        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            self.reporter.report(scope, scope.get("method", ""), self.route_of(scope), 500,
                                 perf_counter() - t0, exc)
            raise
        seconds = perf_counter() - t0
        if seconds >= self.slow or status >= 500:
            self.reporter.report(scope, scope.get("method", ""), self.route_of(scope), status, seconds)


def asgi(app: Any, client: Client, scope: Scope, **kw: Any) -> Any:
    """Wrap an ASGI app; returns it unchanged when the SDK is disabled."""
    return app if client.disabled else TallyASGIMiddleware(app, client, scope, **kw)


# --- WSGI ------------------------------------------------------------------------

def _wsgi_route(environ: dict) -> str:
    # Frameworks know the template only inside the app: Flask apps set it in a
    # before_request hook (docs/sdk.md), Django via request.resolver_match.route.
    return environ.get("tally.route") or UNMATCHED


class TallyWSGIMiddleware:
    """WSGI middleware: `app.wsgi_app = TallyWSGIMiddleware(app.wsgi_app, client, scope=...)`.

    The duration is until the app returns its response iterable (streamed
    bodies are not included).
    """

    def __init__(self, app: Any, client: Client, scope: Scope, *,
                 route_of: Callable[[dict], str] = _wsgi_route, **kw: Any) -> None:
        self.app = app
        self.reporter = Reporter(client, scope, **kw)
        self.route_of = route_of
        self.slow = self.reporter.slow_after

    def __call__(self, environ: dict, start_response: Any) -> Any:
        status = 0

        def start_status(line: str, headers: Any, exc_info: Any = None) -> Any:
            nonlocal status
            status = int(line[:3])
            return start_response(line, headers, exc_info) if exc_info else start_response(line, headers)

        t0 = perf_counter()
        try:
            result = self.app(environ, start_status)
        except Exception as exc:
            self.reporter.report(environ, environ.get("REQUEST_METHOD", ""), self.route_of(environ),
                                 500, perf_counter() - t0, exc)
            raise
        seconds = perf_counter() - t0
        if seconds >= self.slow or status >= 500:
            self.reporter.report(environ, environ.get("REQUEST_METHOD", ""), self.route_of(environ),
                                 status, seconds)
        return result


def wsgi(app: Any, client: Client, scope: Scope, **kw: Any) -> Any:
    """Wrap a WSGI app; returns it unchanged when the SDK is disabled."""
    return app if client.disabled else TallyWSGIMiddleware(app, client, scope, **kw)


# --- aiohttp ---------------------------------------------------------------------

def _aiohttp_route(request: Any) -> str:
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else UNMATCHED


def aiohttp_middleware(client: Client, scope: Scope, *,
                       route_of: Callable[[Any], str] = _aiohttp_route, **kw: Any) -> Any:
    """An aiohttp middleware: `web.Application(middlewares=[aiohttp_middleware(client, ...)])`."""
    from aiohttp import web

    reporter = Reporter(client, scope, **kw)
    slow = reporter.slow_after

    @web.middleware
    async def tally_performance(request: web.Request, handler: Any) -> web.StreamResponse:
        t0 = perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised responses (404, 302...) are normal
            seconds = perf_counter() - t0
            if seconds >= slow or exc.status >= 500:
                reporter.report(request, request.method, route_of(request), exc.status, seconds)
            raise
        except Exception as exc:
            reporter.report(request, request.method, route_of(request), 500, perf_counter() - t0, exc)
            raise
        seconds = perf_counter() - t0
        if seconds >= slow or response.status >= 500:
            reporter.report(request, request.method, route_of(request), response.status, seconds)
        return response

    if client.disabled:
        @web.middleware
        async def passthrough(request: web.Request, handler: Any) -> web.StreamResponse:
            return await handler(request)

        return passthrough
    return tally_performance
