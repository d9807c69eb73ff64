"""Request-performance middleware (seed 001's API performance tracking).

For ASGI (Starlette, FastAPI...), WSGI (Flask, Django...) and aiohttp apps. It
reports, through the product SDK, catalog events for:
- every request, rolled up per tenant scope, route, method and minute
  (api.request_rollup: count, errors, 4xx, duration sum and max, a cumulative
  latency histogram), so error rate and p95 per route can be queried while the
  volume stays bounded (at most one event per route and method a minute, and at
  most MAX_ROLLUP_CELLS cells a minute);
- requests slower than TALLY_SDK_SLOW_REQUEST_MS (api.request_slow) and, separately,
  TALLY_SDK_VERY_SLOW_REQUEST_MS (api.request_very_slow);
- server errors: a 5xx response or an unhandled exception (api.request_failed).
The per-request events are off in the on_premise profile (profiles.py).

Each request runs in a request context (context.py): its request_id (the caller's
X-Request-ID when it is a safe opaque id, else a fresh UUIDv7) and tenant scope, so
every event tracked while handling it carries that request_id.

Each event carries the route *template* (`/tickets/{id}`), never the raw URL or
query string. A minute's rollup is sent by the first request of a later minute, or
at client.close(). With TALLY_DISABLED=1 the middleware returns the app unchanged.

Events need a tenant scope: pass `scope=("tenant", "workspace")` for a fixed
one, or a function of the request (ASGI scope, WSGI environ or aiohttp request)
returning (tenant_id, workspace_id), or None to skip that request.
"""

from __future__ import annotations

import re
import threading
from bisect import bisect_left
from collections.abc import Callable
from contextvars import Context
from time import perf_counter, time
from typing import Any

from tally.producers.sdk.client import Actor, Client
from tally.producers.sdk.context import CURRENT, RequestContext
from tally.schemas.catalog import LATENCY_BUCKETS_MS, METHODS
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
    """Turns finished requests into catalog events (framework-independent)."""

    def __init__(self, client: Client, scope: Scope, *, slow_after: float | None = None,
                 very_slow_after: float | None = None, actor: Actor | None = None) -> None:
        self.client = client
        self.scope = scope
        settings = getattr(client, "settings", None)
        self.slow_after = slow_after if slow_after is not None else getattr(settings, "sdk_slow_request_ms", 1000) / 1000
        self.very_slow_after = (very_slow_after if very_slow_after is not None
                                else getattr(settings, "sdk_very_slow_request_ms", 2000) / 1000)
        self.actor = actor or Actor("service", client.app or "")
        self.per_request = getattr(client, "profile", "hosted") != "on_premise"
        self.rollup = Rollup(self._send_rollup)
        if hasattr(client, "before_close"):
            client.before_close(self.rollup.flush)

    def where(self, request: Any) -> tuple[str, str] | None:
        """The request's tenant scope, or None to leave it out; never raises."""
        try:
            return self.scope(request) if callable(self.scope) else self.scope
        except Exception:
            self.client.count_drop(DropReason.MIDDLEWARE_ERROR, "the scope function failed")
            return None

    def finished(self, where: tuple[str, str] | None, method: str, route: str, status: int, seconds: float,
                 exc: BaseException | None = None) -> None:
        """Called for every request, inside its request context; never raises."""
        if where is None:
            return
        try:
            method = method if method in _METHODS else method.upper() if method.upper() in _METHODS else "OTHER"
            failed = status >= 500 or exc is not None
            if self.per_request and (failed or seconds >= self.slow_after):
                self.report(where, method, route, status, seconds, exc)
            self.rollup.add(where, route or UNMATCHED, method, status, seconds, failed)
        except Exception:  # reporting must never break the host's request
            self.client.count_drop(DropReason.MIDDLEWARE_ERROR, "could not report a request")

    def report(self, where: tuple[str, str], method: str, route: str, status: int, seconds: float,
               exc: BaseException | None = None) -> None:
        """The per-request events of one slow or failed request."""
        tenant_id, workspace_id = where
        meta = {"route": route or UNMATCHED, "method": method,
                "status_class": f"{min(max(status // 100, 1), 5)}xx",
                "duration_bucket": duration_bucket(seconds), "duration_ms": min(int(seconds * 1000), _MAX_MS)}
        track = self.client.track
        actor = self.actor
        if status >= 500 or exc is not None:
            track("api.request_failed", tenant_id=tenant_id, workspace_id=workspace_id,
                  actor=actor, metadata={**meta, "error_type": error_type(exc), "success": False})
        if seconds >= self.slow_after:
            track("api.request_slow", tenant_id=tenant_id, workspace_id=workspace_id,
                  actor=actor, metadata=meta)
        if seconds >= self.very_slow_after:
            track("api.request_very_slow", tenant_id=tenant_id, workspace_id=workspace_id,
                  actor=actor, metadata=meta)

    def _send_rollup(self, minute: int, cells: dict[tuple, list[int]]) -> None:
        # Run outside any request context: a rollup belongs to no single request.
        Context().run(self._send_cells, minute, cells)

    def _send_cells(self, minute: int, cells: dict[tuple, list[int]]) -> None:
        for ((tenant_id, workspace_id), route, method), c in cells.items():
            meta = {"route": route, "method": method, "minute": minute * 60_000, "count": c[0],
                    "errors": c[1], "client_errors": c[2], "duration_sum_ms": c[3], "duration_max_ms": c[4]}
            below = 0
            for bound, n in zip(LATENCY_BUCKETS_MS, c[5:], strict=False):
                below += n
                meta[f"le_{bound}ms"] = below
            try:
                self.client.track("api.request_rollup", tenant_id=tenant_id, workspace_id=workspace_id,
                                  actor=self.actor, metadata=meta)
            except Exception:
                self.client.count_drop(DropReason.MIDDLEWARE_ERROR, "could not send a request rollup")


_MAX_MS = 86_400_000
MAX_ROLLUP_CELLS = 1000  # (scope, route, method) cells a minute; beyond, requests count under /* OTHER


class Rollup:
    """Per-minute request counts per (scope, route, method); thread-safe. A cell is
    [count, errors, 4xx, duration sum ms, duration max ms, one count per latency bucket...]."""

    def __init__(self, send: Callable[[int, dict[tuple, list[int]]], None],
                 clock: Callable[[], float] = time) -> None:
        self._send = send
        self._clock = clock
        self._lock = threading.Lock()
        self._minute = -1
        self._cells: dict[tuple, list[int]] = {}

    def add(self, where: tuple[str, str], route: str, method: str, status: int, seconds: float,
            failed: bool) -> None:
        ms = min(int(seconds * 1000), _MAX_MS)
        minute = int(self._clock()) // 60
        done = None
        with self._lock:
            if minute != self._minute:
                if self._cells:
                    done = (self._minute, self._cells)
                self._minute, self._cells = minute, {}
            cells = self._cells
            key = (where, route, method)
            c = cells.get(key)
            if c is None:
                if len(cells) >= MAX_ROLLUP_CELLS:
                    key = (where, UNMATCHED, "OTHER")
                    c = cells.get(key)
                if c is None:
                    c = cells[key] = [0] * (5 + len(LATENCY_BUCKETS_MS) + 1)
            c[0] += 1
            c[1] += failed
            c[2] += 400 <= status < 500
            c[3] += ms
            if ms > c[4]:
                c[4] = ms
            c[5 + bisect_left(LATENCY_BUCKETS_MS, ms)] += 1
        if done is not None:
            self._send(*done)

    def flush(self) -> None:
        """Send the current minute's cells now (at close)."""
        with self._lock:
            done, self._cells = (self._minute, self._cells), {}
        if done[1]:
            self._send(*done)


def _run(reporter: Reporter, request: Any, request_id: Any) -> tuple[tuple[str, str] | None, Any]:
    """The request's scope, and the token of its request context (reset it after the request)."""
    where = reporter.where(request)
    return where, CURRENT.set(RequestContext(request_id, where))


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

        where, token = _run(self.reporter, scope, _header(scope.get("headers"), b"x-request-id"))
        t0 = perf_counter()
        try:
            await self.app(scope, receive, send_status)
        except Exception as exc:
            self.reporter.finished(where, scope.get("method", ""), self.route_of(scope), 500,
                                   perf_counter() - t0, exc)
            raise
        else:
            self.reporter.finished(where, scope.get("method", ""), self.route_of(scope), status,
                                   perf_counter() - t0)
        finally:
            CURRENT.reset(token)


def _header(headers: Any, name: bytes) -> bytes | None:
    for k, v in headers or ():
        if k.lower() == name:
            return v
    return None


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
    bodies are not included), and so is the request context: events tracked while
    a streamed body is produced carry no request_id.
    """

    def __init__(self, app: Any, client: Client, scope: Scope, *,
                 route_of: Callable[[dict], str] = _wsgi_route, **kw: Any) -> None:
        self.app = app
        self.reporter = Reporter(client, scope, **kw)
        self.route_of = route_of

    def __call__(self, environ: dict, start_response: Any) -> Any:
        status = 0

        def start_status(line: str, headers: Any, exc_info: Any = None) -> Any:
            nonlocal status
            status = int(line[:3])
            return start_response(line, headers, exc_info) if exc_info else start_response(line, headers)

        where, token = _run(self.reporter, environ, environ.get("HTTP_X_REQUEST_ID"))
        t0 = perf_counter()
        try:
            result = self.app(environ, start_status)
        except Exception as exc:
            self.reporter.finished(where, environ.get("REQUEST_METHOD", ""), self.route_of(environ),
                                   500, perf_counter() - t0, exc)
            raise
        else:
            self.reporter.finished(where, environ.get("REQUEST_METHOD", ""), self.route_of(environ),
                                   status, perf_counter() - t0)
        finally:
            CURRENT.reset(token)
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

    @web.middleware
    async def tally_performance(request: web.Request, handler: Any) -> web.StreamResponse:
        where, token = _run(reporter, request, request.headers.get("X-Request-ID"))
        t0 = perf_counter()
        try:
            response = await handler(request)
        except web.HTTPException as exc:  # raised responses (404, 302...) are normal
            reporter.finished(where, request.method, route_of(request), exc.status, perf_counter() - t0)
            raise
        except Exception as exc:
            reporter.finished(where, request.method, route_of(request), 500, perf_counter() - t0, exc)
            raise
        else:
            reporter.finished(where, request.method, route_of(request), response.status, perf_counter() - t0)
        finally:
            CURRENT.reset(token)
        return response

    if client.disabled:
        @web.middleware
        async def passthrough(request: web.Request, handler: Any) -> web.StreamResponse:
            return await handler(request)

        return passthrough
    return tally_performance
