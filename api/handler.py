"""What every handler of the Stats API uses: the application's keys (settings, warehouse,
key checker, clock), the JSON answers and errors, the bearer key's check, the request's
body and the warehouse's rows. The handlers are in stats.py and adoption.py; the app, its
middlewares and its routes in server.py."""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from typing import Any

import orjson
from aiohttp import web
from tally.api.keys import KeyChecker
from tally.api.warehouse import QueryFailed, Warehouse
from tally.sinks.keystore import KeyRecord

from tally.config import Settings

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


def date_window(request: web.Request, days: int = 30) -> tuple[date, date]:
    """`from` and `to` (YYYY-MM-DD, inclusive) of a Tally endpoint; default: the last `days` days."""

    def day(name: str, default: date) -> date:
        raw = request.query.get(name)
        if raw is None:
            return default
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise ApiError(400, f"{name}: expected a date as YYYY-MM-DD, got {raw!r}") from None

    to = day("to", now(request).date())
    frm = day("from", to - timedelta(days=days - 1))
    if to < frm:
        raise ApiError(400, f"to: {to} is before from ({frm})")
    return frm, to
