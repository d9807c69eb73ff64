"""The `dashboard_users` and `share_links` tables: typed operations, never analyst SQL.

Kept like `api_keys` (sinks/keystore.py): only hashes are stored, a change is a
newer version of the row (read with FINAL). In embedded mode the sink runs these
for `tally user`, `tally share` and the dashboard through its Unix socket
(`account_routes`); in server mode they run against the server with the
operator's (write) or the dashboard user's (read) credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from aiohttp import web
from clickhouse_connect.driver.client import Client

from tally.clock import as_utc, now_micros

ROLES = ("admin", "viewer")
USER_COLUMNS = ("email", "password_hash", "role", "sites", "created_at", "deleted_at", "version")
USER_SELECT = "SELECT email, password_hash, role, sites, created_at, deleted_at FROM dashboard_users FINAL"
LINK_COLUMNS = ("link_id", "token_hash", "site", "name", "created_at", "revoked_at", "version")
LINK_SELECT = "SELECT link_id, token_hash, site, name, created_at, revoked_at FROM share_links FINAL"


def _when(v: str | None) -> datetime | None:
    return datetime.fromisoformat(v) if v else None


def _iso(v: datetime | None) -> str | None:
    return v.isoformat() if v else None


@dataclass(frozen=True)
class UserRecord:
    email: str
    password_hash: str
    role: str  # admin: every site, the operations page; viewer: the sites granted
    sites: tuple[str, ...]
    created_at: datetime
    deleted_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        """What `tally user list` shows: never the hash."""
        return {"email": self.email, "role": self.role, "sites": list(self.sites),
                "created_at": self.created_at.isoformat(), "deleted_at": _iso(self.deleted_at)}

    def to_json(self) -> dict[str, Any]:
        return {**self.public(), "password_hash": self.password_hash}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> UserRecord:
        return cls(str(d["email"]), str(d.get("password_hash", "")), str(d["role"]), tuple(map(str, d["sites"])),
                   datetime.fromisoformat(d["created_at"]), _when(d.get("deleted_at")))


@dataclass(frozen=True)
class LinkRecord:
    link_id: str
    token_hash: str
    site: str
    name: str
    created_at: datetime
    revoked_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        return {"link_id": self.link_id, "site": self.site, "name": self.name,
                "created_at": self.created_at.isoformat(), "revoked_at": _iso(self.revoked_at)}

    def to_json(self) -> dict[str, Any]:
        return {**self.public(), "token_hash": self.token_hash}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> LinkRecord:
        return cls(str(d["link_id"]), str(d.get("token_hash", "")), str(d["site"]), str(d.get("name", "")),
                   datetime.fromisoformat(d["created_at"]), _when(d.get("revoked_at")))


def put_user(client: Client, u: UserRecord) -> None:
    client.insert("dashboard_users", [[u.email, u.password_hash, u.role, list(u.sites), u.created_at, u.deleted_at,
                                       now_micros()]], column_names=list(USER_COLUMNS))


def find_user(client: Client, email: str) -> UserRecord | None:
    rows = client.query(USER_SELECT + " WHERE email = {e:String}", parameters={"e": email}).result_rows
    return _user(rows[0]) if rows else None


def _user(r: tuple) -> UserRecord:
    return UserRecord(r[0], r[1], r[2], tuple(r[3]), as_utc(r[4]), as_utc(r[5]))


def all_users(client: Client) -> list[UserRecord]:
    return [_user(r) for r in client.query(USER_SELECT + " ORDER BY email").result_rows]


def put_link(client: Client, link: LinkRecord) -> None:
    client.insert("share_links", [[link.link_id, link.token_hash, link.site, link.name, link.created_at,
                                   link.revoked_at, now_micros()]], column_names=list(LINK_COLUMNS))


def _link(r: tuple) -> LinkRecord:
    return LinkRecord(r[0], r[1], r[2], r[3], as_utc(r[4]), as_utc(r[5]))


def find_link(client: Client, link_id: str) -> LinkRecord | None:
    rows = client.query(LINK_SELECT + " WHERE link_id = {k:String}", parameters={"k": link_id}).result_rows
    return _link(rows[0]) if rows else None


def all_links(client: Client) -> list[LinkRecord]:
    return [_link(r) for r in client.query(LINK_SELECT + " ORDER BY created_at, link_id").result_rows]


def revoke_link(client: Client, link_id: str) -> LinkRecord | None:
    """Mark the link revoked (a newer row); None when there is no such link."""
    link = find_link(client, link_id)
    if link is not None and link.revoked_at is None:
        link = replace(link, revoked_at=datetime.now(UTC))
        put_link(client, link)
    return link


def account_routes(app: web.Application, run: Any) -> None:
    """The typed operations on the sink's socket; `run` executes a function with a client
    on the sink's writer session (readservice.KeyOps.run)."""

    def bad(message: str) -> web.Response:
        return web.json_response({"error": message}, status=400)

    def missing(what: str) -> web.Response:
        return web.json_response({"error": f"no such {what}"}, status=404)

    async def body(request: web.Request) -> dict[str, Any] | None:
        try:
            data = await request.json()
        except ValueError:
            return None
        return data if isinstance(data, dict) else None

    async def users(request: web.Request) -> web.Response:
        return web.json_response([u.public() for u in await run(all_users)])

    async def user(request: web.Request) -> web.Response:
        found = await run(lambda c: find_user(c, request.match_info["email"]))
        return web.json_response(found.to_json()) if found else missing("user")

    async def save(request: web.Request, parse: Any, problem: Any, put: Any) -> web.Response:
        """Store a record sent by `tally user`/`tally share` once it is well formed."""
        try:
            record = parse(await body(request) or {})
        except (KeyError, TypeError, ValueError) as exc:
            return bad(f"bad record: {exc}")
        if (why := problem(record)) is not None:
            return bad(why)
        await run(lambda c: put(c, record))
        return web.json_response(record.public(), status=201)

    async def save_user(request: web.Request) -> web.Response:
        def problem(u: UserRecord) -> str | None:
            if u.role not in ROLES or "@" not in u.email or not u.password_hash.startswith("$argon2"):
                return "a user needs an email, a role (admin or viewer) and an argon2 password_hash"
            return None

        return await save(request, UserRecord.from_json, problem, put_user)

    async def links(request: web.Request) -> web.Response:
        return web.json_response([x.public() for x in await run(all_links)])

    async def link(request: web.Request) -> web.Response:
        found = await run(lambda c: find_link(c, request.match_info["link_id"]))
        return web.json_response(found.to_json()) if found else missing("link")

    async def save_link(request: web.Request) -> web.Response:
        def problem(x: LinkRecord) -> str | None:
            if not x.link_id or len(x.token_hash) != 64 or not x.site:
                return "a link needs link_id, a SHA-256 token_hash and a site"
            return None

        return await save(request, LinkRecord.from_json, problem, put_link)

    async def revoke(request: web.Request) -> web.Response:
        found = await run(lambda c: revoke_link(c, request.match_info["link_id"]))
        return web.json_response(found.public()) if found else missing("link")

    app.router.add_get("/v1/users", users)
    app.router.add_post("/v1/users", save_user)
    app.router.add_get("/v1/users/{email}", user)
    app.router.add_get("/v1/shares", links)
    app.router.add_post("/v1/shares", save_link)
    app.router.add_get("/v1/shares/{link_id}", link)
    app.router.add_post("/v1/shares/{link_id}/revoke", revoke)
