"""The web dashboard on the Stats API's server: login, pages, shared links, operations.

Pages are HTML shells; every number on them is fetched by dashboard.js from the
Stats API (`/api/...`) itself. A browser reaches the API without a bearer key
in one of two ways, resolved here into the same scope record a key would have
(`handler.SESSION_SCOPE`), so the API's own scope checks apply unchanged:
- a session cookie (HttpOnly, SameSite=Strict) plus the session's CSRF token in
  the `X-CSRF-Token` header: the user's sites (an admin: every site and tenant);
- a shared link's token in the `X-Tally-Share` header: that one site, read only.
Visitors of tracked sites never come here and never get a cookie.
"""

from __future__ import annotations

import asyncio
import json
import secrets
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from aiohttp import web
from tally.api import accounts
from tally.api.handler import SESSION_SCOPE, SETTINGS, WAREHOUSE, failure
from tally.api.sql import Sql
from tally.api.web import pages
from tally.api.web.directory import Directory
from tally.api.web.sessions import (
    CSRF_HEADER,
    LOGIN_COOKIE,
    SESSION_COOKIE,
    SESSION_SECONDS,
    LoginThrottle,
    Session,
    Sessions,
    same,
)
from tally.sinks.accountstore import UserRecord
from tally.sinks.keystore import KeyRecord
from tally.sinks.reconcile import read_latest

STATIC = Path(__file__).parent / "static"
SESSIONS = web.AppKey("sessions", Sessions)
THROTTLE = web.AppKey("login_throttle", LoginThrottle)
DIRECTORY = web.AppKey("directory", Directory)
SHARE_HEADER = "X-Tally-Share"
CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
       "form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
OPS_CACHE_SECONDS = 5.0


class AnySite(tuple):
    """An admin's site scope: every site, including one without data yet."""

    def __contains__(self, site: object) -> bool:
        return isinstance(site, str) and bool(site)


def scope_of(user: UserRecord) -> KeyRecord:
    """The scope a signed-in user reads the Stats API with."""
    admin = user.role == "admin"
    return KeyRecord(f"user:{user.email}", "", "dashboard session", AnySite() if admin else user.sites,
                     ("*",) if admin else (), user.created_at)


@web.middleware
async def headers(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    response = await handler(request)
    response.headers.setdefault("Content-Security-Policy", CSP)
    response.headers["X-Content-Type-Options"] = "nosniff"
    # A shared link's token never leaves in a Referer; same-origin (not no-referrer) so that
    # browsers still send a real Origin on our own form posts (no-referrer makes it "null").
    response.headers["Referrer-Policy"] = "same-origin"
    response.headers["X-Frame-Options"] = "DENY"
    if not request.path.startswith("/static/"):
        response.headers["Cache-Control"] = "no-store"
    return response


async def current(request: web.Request) -> tuple[Session, UserRecord] | None:
    """The signed-in user, or None (no cookie, expired, or the user was deleted)."""
    session = request.app[SESSIONS].get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        return None
    user = await request.app[DIRECTORY].user(session.email)
    if user is None or user.deleted_at is not None:
        request.app[SESSIONS].end_user(session.email)
        return None
    return session, user


def same_origin(request: web.Request) -> bool:
    """A state-changing request from a page of this dashboard (or from no page at all)."""
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    parts = urlsplit(origin)
    return parts.netloc.lower() == request.headers.get("Host", "").lower() and parts.scheme in ("http", "https")


@web.middleware
async def browser_scope(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """Turn a shared link or a session (with its CSRF token) into an API scope."""
    if not request.path.startswith("/api/") or "Authorization" in request.headers:
        return await handler(request)
    token = request.headers.get(SHARE_HEADER)
    if token is not None:
        link_id = accounts.link_id_of(token)
        link = await request.app[DIRECTORY].link(link_id) if link_id else None
        if not accounts.link_ok(link, token):
            return failure(401, "This shared link is not valid (revoked, or never made).")
        request[SESSION_SCOPE] = KeyRecord(f"share:{link.link_id}", "", "shared link", (link.site,), (),
                                           link.created_at)
        return await handler(request)
    if SESSION_COOKIE in request.cookies:
        found = await current(request)
        if found is None:
            return failure(401, "Your session has ended; sign in again.")
        session, user = found
        if not same(request.headers.get(CSRF_HEADER), session.csrf) or not same_origin(request):
            return failure(403, f"Missing or wrong {CSRF_HEADER} header.")
        request[SESSION_SCOPE] = scope_of(user)
    return await handler(request)


def html(body: str, status: int = 200) -> web.Response:
    return web.Response(text=body, status=status, content_type="text/html", charset="utf-8")


def set_cookie(response: web.StreamResponse, name: str, value: str, max_age: int, path: str = "/") -> None:
    response.set_cookie(name, value, max_age=max_age, path=path, httponly=True, samesite="Strict",
                        secure=False)  # served on http://127.0.0.1; behind TLS the proxy adds Secure


async def login_page(request: web.Request, message: str = "", status: int = 200) -> web.Response:
    token = secrets.token_urlsafe(32)
    response = html(pages.login(token, message), status)
    set_cookie(response, LOGIN_COOKIE, token, 1800, "/login")
    return response


def client_of(request: web.Request) -> str:
    return request.remote or "unknown"


async def login(request: web.Request) -> web.StreamResponse:
    form = await request.post()
    email = str(form.get("email", "")).strip().lower()
    password = str(form.get("password", ""))
    if not same_origin(request) or not same(str(form.get("csrf", "")), request.cookies.get(LOGIN_COOKIE)):
        return await login_page(request, "The form expired; please try again.", 403)
    throttle = request.app[THROTTLE]
    wait = throttle.retry_after(email, client_of(request))
    if wait > 0:
        response = await login_page(request, f"Too many failed sign-ins; try again in {int(wait // 60) + 1} minutes.", 429)
        response.headers["Retry-After"] = str(int(wait) + 1)
        return response
    user = await request.app[DIRECTORY].user(email) if email else None
    # argon2 takes tens of ms and 64 MiB by design: off the event loop, so the API keeps answering.
    if not await asyncio.to_thread(accounts.password_ok, user, password):
        throttle.failed(email, client_of(request))
        return await login_page(request, "Wrong email or password.", 401)
    throttle.succeeded(email)
    request.app[SESSIONS].end(request.cookies.get(SESSION_COOKIE))  # never keep a cookie from before login
    token, _ = request.app[SESSIONS].create(user.email)
    response = web.HTTPSeeOther("/")
    set_cookie(response, SESSION_COOKIE, token, SESSION_SECONDS)
    response.del_cookie(LOGIN_COOKIE, path="/login")
    raise response


async def logout(request: web.Request) -> web.StreamResponse:
    found = await current(request)
    if found is not None:
        form = await request.post()
        if not same_origin(request) or not same(str(form.get("csrf", "")), found[0].csrf):
            return html(pages.message("Sign-out refused", "The form's CSRF token is missing or wrong."), 403)
        request.app[SESSIONS].end(request.cookies.get(SESSION_COOKIE))
    response = web.HTTPSeeOther("/login")
    response.del_cookie(SESSION_COOKIE, path="/")
    raise response


async def signed_in(request: web.Request, admin: bool = False) -> tuple[Session, UserRecord]:
    found = await current(request)
    if found is None:
        raise web.HTTPSeeOther("/login")
    if admin and found[1].role != "admin":
        raise web.HTTPForbidden(text=pages.message("Admins only", "This page is for admins."), content_type="text/html")
    return found


async def visible_sites(request: web.Request, user: UserRecord) -> list[str]:
    if user.role == "admin":
        return sorted(set(await request.app[DIRECTORY].sites()) | set(user.sites))
    return list(user.sites)


async def home(request: web.Request) -> web.StreamResponse:
    session, user = await signed_in(request)
    sites = await visible_sites(request, user)
    return html(pages.sites(user, session.csrf, sites))


def collector_url(request: web.Request) -> str:
    s = request.app[SETTINGS]
    return f"http://{s.collector_host}:{s.collector_port}"


async def site_page(request: web.Request) -> web.StreamResponse:
    session, user = await signed_in(request)
    site = request.match_info["site"]
    if site not in scope_of(user).sites:
        return html(pages.message("Not found", "There is no such site, or you have no access to it."), 404)
    sites = await visible_sites(request, user)
    return html(pages.dashboard(site, user=user, csrf=session.csrf, sites=sites, collector=collector_url(request)))


async def shared_page(request: web.Request) -> web.StreamResponse:
    token = request.match_info["token"]
    link_id = accounts.link_id_of(token)
    link = await request.app[DIRECTORY].link(link_id) if link_id else None
    if not accounts.link_ok(link, token):
        return html(pages.message("Link not valid", "This shared link was revoked, or never existed."), 404)
    return html(pages.dashboard(link.site, user=None, csrf="", sites=[link.site], collector=collector_url(request)))


async def adoption_page(request: web.Request) -> web.StreamResponse:
    session, user = await signed_in(request, admin=True)
    return html(pages.adoption(user, session.csrf))


async def operations_page(request: web.Request) -> web.StreamResponse:
    session, user = await signed_in(request, admin=True)
    return html(pages.operations(user, session.csrf))


class OperationsStatus:
    """What `tally status --json` says (components, groups, lag), from the command itself,
    so the page and the terminal never disagree; cached for a few seconds."""

    def __init__(self) -> None:
        self.at = 0.0
        self.value: dict[str, Any] | None = None
        self.lock = asyncio.Lock()

    async def get(self) -> dict[str, Any]:
        async with self.lock:
            if self.value is None or time.monotonic() - self.at > OPS_CACHE_SECONDS:
                proc = await asyncio.create_subprocess_exec(
                    sys.executable, "-m", "tally.ops", "status", "--json",
                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
                out, _ = await asyncio.wait_for(proc.communicate(), 60)
                try:
                    self.value = json.loads(out)
                except ValueError:
                    self.value = {"components": [], "groups": [], "error": "`tally status` gave no answer"}
                self.value["checked_at"] = datetime.now(UTC).isoformat(timespec="seconds")
                self.at = time.monotonic()
            return self.value


OPS = web.AppKey("operations", OperationsStatus)


async def operations_json(request: web.Request) -> web.Response:
    found = await current(request)
    if found is None:
        return failure(401, "Sign in first.")
    if found[1].role != "admin":
        return failure(403, "The operations page is for admins.")
    if not same(request.headers.get(CSRF_HEADER), found[0].csrf):
        return failure(403, f"Missing or wrong {CSRF_HEADER} header.")
    answer = dict(await request.app[OPS].get())
    answer["reconcile"] = read_latest(request.app[SETTINGS])
    try:  # drops and bad rows are the warehouse's: a sink that is down leaves the rest of the page
        answer["drops"] = await request.app[WAREHOUSE].rows(DROPS_BY_DAY)
        answer["bad_rows"] = await request.app[WAREHOUSE].rows(BAD_ROWS_BY_DAY)
    except Exception as exc:  # noqa: BLE001 (any failure of the read path is shown, not raised)
        answer["drops"] = answer["bad_rows"] = None
        answer["reasons_error"] = f"drops and bad rows unavailable: {exc or type(exc).__name__}"
    return web.json_response(answer)


# Drops and bad rows by reason per day, over the last REASON_DAYS days (UTC), as
# [day, reason, count]; bad_rows_unique counts a replayed bad row once, as `tally query` does.
REASON_DAYS = 14
DROPS_BY_DAY = Sql(f"SELECT toString(day), reason, toUInt64(sum(dropped)) FROM drops_daily "
                   f"WHERE day > today() - {REASON_DAYS} GROUP BY day, reason ORDER BY day, reason")
BAD_ROWS_BY_DAY = Sql(f"SELECT toString(toDate(failed_at)) AS d, reason, count() FROM bad_rows_unique "
                      f"WHERE failed_at > today() - {REASON_DAYS} GROUP BY d, reason ORDER BY d, reason")


def setup(app: web.Application) -> None:
    settings = app[SETTINGS]
    app[SESSIONS] = Sessions()
    app[THROTTLE] = LoginThrottle()
    app[DIRECTORY] = Directory(settings, app[WAREHOUSE])
    app[OPS] = OperationsStatus()
    app.middlewares.append(headers)
    app.middlewares.append(browser_scope)
    r = app.router
    r.add_get("/", home)
    r.add_get("/login", login_page)
    r.add_post("/login", login)
    r.add_post("/logout", logout)
    r.add_get("/sites/{site}", site_page)
    r.add_get("/share/{token}", shared_page)
    r.add_get("/adoption", adoption_page)
    r.add_get("/operations", operations_page)
    r.add_get("/web/v1/operations", operations_json)
    r.add_static("/static/", STATIC, append_version=False)

    async def close(app: web.Application) -> None:
        await app[DIRECTORY].close()

    app.on_cleanup.append(close)
