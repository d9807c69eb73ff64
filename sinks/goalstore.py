"""The `goals` table: typed operations, never analyst SQL.

A goal is a site's custom event name (kind `event`) or page-path pattern (kind `page`:
`*` matches within one path segment, `**` across segments), shown under its name. Kept
like `api_keys` (sinks/keystore.py): removing is a newer version of the row (read with
FINAL). In embedded mode the sink runs these for `tally goals` through its Unix socket
(`goal_routes`), on its one key-operations thread, so the uniqueness check and the insert
of `add` cannot interleave; in server mode they run against the server with the
operator's credentials. Goals are not secret: analysts and the Stats API read the table.
"""

from __future__ import annotations

import re
import secrets
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.client import Client

from tally.clock import as_utc, now_micros

KINDS = ("event", "page")
# Not conversions: pageviews are goals by page, and Plausible's engagement signals are not events of their own.
RESERVED_EVENTS = ("pageview", "engagement")
MAX_NAME = 120  # Plausible's limit for an event goal's name
# A query carries all of a site's goals as parameters in one request frame (512 KiB,
# sinks/sqlsocket.py): 100 goals of 500 characters (at most 2.5 KB each as a regex) fit.
MAX_PATTERN = 500
MAX_GOALS = 100  # per site
MAX_SITE = 253
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
COLUMNS = ("goal_id", "site", "name", "kind", "value", "created_at", "deleted_at", "version")
SELECT = "SELECT goal_id, site, name, kind, value, created_at, deleted_at FROM goals FINAL"


@dataclass(frozen=True)
class GoalRecord:
    goal_id: str
    site: str
    name: str  # what the Stats API's `event:goal` shows and filters by
    kind: str  # event or page
    value: str  # the event name, or the page pattern
    created_at: datetime
    deleted_at: datetime | None = None

    def to_json(self) -> dict[str, Any]:
        return {"goal_id": self.goal_id, "site": self.site, "name": self.name, "kind": self.kind, "value": self.value,
                "created_at": self.created_at.isoformat(),
                "deleted_at": self.deleted_at.isoformat() if self.deleted_at else None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> GoalRecord:
        deleted = d.get("deleted_at")
        return cls(str(d["goal_id"]), str(d["site"]), str(d["name"]), str(d["kind"]), str(d["value"]),
                   datetime.fromisoformat(d["created_at"]), datetime.fromisoformat(deleted) if deleted else None)


def problem(g: GoalRecord) -> str | None:
    """What is wrong with a goal, naming the field (as `tally goals add` spells it); None if nothing."""
    if not re.fullmatch(r"[0-9a-f]{12}", g.goal_id):
        return "goal_id: 12 hex characters"
    if not g.site or len(g.site) > MAX_SITE or _CONTROL.search(g.site) or " " in g.site:
        return f"--site: a site is 1 to {MAX_SITE} characters without spaces or control characters"
    if g.kind == "event":
        if not g.value.strip() or g.value != g.value.strip() or len(g.value) > MAX_NAME or _CONTROL.search(g.value):
            return f"--event: an event name is 1 to {MAX_NAME} characters, without surrounding spaces or control characters"
        if g.value in RESERVED_EVENTS:
            return (f"--event: `{g.value}` cannot be a goal (pageviews are goals by page: use --page; "
                    "engagement events are not conversions)")
    elif g.kind == "page":
        if not g.value.startswith("/"):
            return f"--page: a page pattern starts with / (got {g.value!r})"
        if len(g.value) > MAX_PATTERN or _CONTROL.search(g.value) or " " in g.value:
            return f"--page: a page pattern is at most {MAX_PATTERN} characters, without spaces or control characters"
        if "?" in g.value or "#" in g.value:
            return "--page: a page pattern is a path: without ? or # (pages are stored without query and fragment)"
    else:
        return f"kind: one of {', '.join(KINDS)}, not {g.kind!r}"
    if not g.name.strip() or len(g.name) > MAX_NAME or _CONTROL.search(g.name):
        return f"--name: a goal's name is 1 to {MAX_NAME} characters without control characters"
    return None


def new_goal(site: str, event: str | None, page: str | None, name: str | None = None) -> GoalRecord:
    """A goal from `tally goals add`'s options, not yet checked (see `problem`). The default
    name is Plausible's: the event name, or `Visit <pattern>`."""
    kind, value = ("event", event) if event is not None else ("page", page or "")
    default = value if kind == "event" else f"Visit {value}"
    return GoalRecord(secrets.token_hex(6), site, default if name is None else name, kind, value,
                      datetime.now(UTC))


def _row(r: tuple) -> GoalRecord:
    return GoalRecord(r[0], r[1], r[2], r[3], r[4], as_utc(r[5]), as_utc(r[6]))


def insert(client: Client, g: GoalRecord) -> None:
    client.insert("goals", [[g.goal_id, g.site, g.name, g.kind, g.value, g.created_at, g.deleted_at, now_micros()]],
                  column_names=list(COLUMNS))


def find(client: Client, goal_id: str) -> GoalRecord | None:
    rows = client.query(SELECT + " WHERE goal_id = {g:String}", parameters={"g": goal_id}).result_rows
    return _row(rows[0]) if rows else None


def live(client: Client, site: str | None = None) -> list[GoalRecord]:
    """The goals not removed, of one site or of all, in the order they were added."""
    where = " WHERE deleted_at IS NULL" + (" AND site = {s:String}" if site is not None else "")
    rows = client.query(SELECT + where + " ORDER BY site, created_at, goal_id",
                        parameters={"s": site} if site is not None else None).result_rows
    return [_row(r) for r in rows]


def add(client: Client, g: GoalRecord) -> str | None:
    """Store a goal unless it is malformed or its site already has one with the same name
    or the same event/page: then the reason, naming the field."""
    if (why := problem(g)) is not None:
        return why
    others = live(client, g.site)
    if len(others) >= MAX_GOALS:
        return f"--site: {g.site} has {len(others)} goals, the most a site may have; remove one first"
    for other in others:
        if other.name == g.name:
            return f"--name: {g.site} already has a goal named {g.name!r} ({other.goal_id}); give another --name"
        if (other.kind, other.value) == (g.kind, g.value):
            return f"--{g.kind}: {g.site} already has this goal: {other.goal_id} {other.name!r}"
    insert(client, g)
    return None


def remove(client: Client, goal_id: str) -> GoalRecord | None:
    """Mark the goal removed (a newer version of its row); None when there is no such live goal."""
    g = find(client, goal_id)
    if g is None or g.deleted_at is not None:
        return None
    g = replace(g, deleted_at=datetime.now(UTC))
    insert(client, g)
    return g


def goal_routes(app: web.Application, run: Any) -> None:
    """The operations on the sink's socket; `run` executes a function with a client on the
    sink's key-operations thread (readservice.KeyOps.run)."""

    def error(status: int, message: str) -> web.Response:
        return web.json_response({"error": message}, status=status)

    async def listing(request: web.Request) -> web.Response:
        site = request.query.get("site")
        return web.json_response([g.to_json() for g in await run(lambda c: live(c, site))])

    async def create(request: web.Request) -> web.Response:
        try:
            body = await request.json()
            g = GoalRecord.from_json(body)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            return error(400, f"bad goal record: {exc}")
        if (why := await run(lambda c: add(c, g))) is not None:
            return error(400, why)
        return web.json_response(g.to_json(), status=201)

    async def delete(request: web.Request) -> web.Response:
        g = await run(lambda c: remove(c, request.match_info["goal_id"]))
        return web.json_response(g.to_json()) if g else error(404, "no such goal")

    app.router.add_get("/v1/goals", listing)
    app.router.add_post("/v1/goals", create)
    app.router.add_post("/v1/goals/{goal_id}/remove", delete)
