"""Plausible's Stats API: `POST /api/v2/query` and `GET /api/v1/stats/realtime/visitors`."""

from __future__ import annotations

from datetime import date
from typing import Any

from aiohttp import web
from tally.api.handler import (
    SETTINGS,
    ApiError,
    answer,
    authorize,
    json_body,
    now,
    require_site,
    rows,
)
from tally.api.request import RequestError, StatsQuery, parse_request
from tally.api.runner import Runner
from tally.api.sql import Sql, first_day_sql, realtime_sql
from tally.sinks.rollups import kept_from

from tally.caches import bounded_put


async def first_day(request: web.Request, site: str) -> date | None:
    sql = first_day_sql()
    found = await rows(request, Sql(sql.text, {"site": site}))
    return date.fromisoformat(found[0][0]) if found and int(found[0][1]) > 0 else None


PARSED: dict[tuple[bytes, date, date | None], StatsQuery] = {}  # a dashboard sends the same bodies again and again
PARSED_LIMIT = 256  # bodies are at most 64 KiB


def parsed(raw: bytes, body: dict[str, Any], today: date, start: date | None) -> StatsQuery:
    """The request `raw` (its JSON, `body`) as a typed query; kept per body and day (the
    query is shared: nothing may change it)."""
    key = (raw, today, start)
    q = PARSED.get(key)
    if q is None:
        try:
            q = parse_request(body, today, start)
        except RequestError as exc:
            raise ApiError(400, str(exc)) from None
        bounded_put(PARSED, key, q, PARSED_LIMIT)
    return q


async def query(request: web.Request) -> web.Response:
    key = await authorize(request)
    body = await json_body(request)
    if not isinstance(body, dict):
        raise ApiError(400, "#: Type mismatch. Expected Object.")
    site = require_site(key, body.get("site_id"))
    today = now(request).date()
    start = await first_day(request, site) if body.get("date_range") == "all" else None
    q = parsed(await request.read(), body, today, start)
    settings = request.app[SETTINGS]
    runner = Runner(q, lambda sql: rows(request, sql), settings.salt_period, kept_from(settings, today))
    try:
        return answer(await runner.run(now(request)))
    except RequestError as exc:  # a goal filter naming no goal of the site
        raise ApiError(400, str(exc)) from None


async def realtime_visitors(request: web.Request) -> web.Response:
    key = await authorize(request)
    site = require_site(key, request.query.get("site_id"))
    sql = realtime_sql()
    found = await rows(request, Sql(sql.text, {"site": site}))
    return answer(int(found[0][0]) if found else 0)


def setup(app: web.Application) -> None:
    app.router.add_post("/api/v2/query", query)
    app.router.add_get("/api/v1/stats/realtime/visitors", realtime_visitors)
