"""Where the dashboard looks up users and shared links: the sink's socket (embedded) or the
server with the dashboard's read-only user, as the API keys are looked up (api/warehouse.py).
Answers are cached for 10 s, so a deleted user or revoked link stops working within that."""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import quote

import aiohttp
from tally.api.warehouse import ServerWarehouse, Unavailable, Warehouse
from tally.sinks import accountstore
from tally.sinks.accountstore import LinkRecord, UserRecord

from tally.config import Settings

CACHE_SECONDS = 10.0


class Directory:
    def __init__(self, settings: Settings, warehouse: Warehouse, clock: Callable[[], float] = time.monotonic) -> None:
        self.settings = settings
        self.warehouse = warehouse
        self.clock = clock
        self._cache: dict[tuple[str, str], tuple[float, Any]] = {}
        self._session: aiohttp.ClientSession | None = None

    async def _socket_get(self, route: str) -> dict[str, Any] | None:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=str(self.settings.socket_path)),
                                                  timeout=aiohttp.ClientTimeout(total=30))
        try:
            async with self._session.get(f"http://sink{route}") as resp:
                if resp.status == 404:
                    return None
                if resp.status != 200:
                    raise Unavailable(f"account lookup failed: HTTP {resp.status}")
                return await resp.json()
        except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
            raise Unavailable(f"the sink's warehouse socket does not answer ({exc}); is the sink running?") from None

    async def _cached(self, kind: str, name: str, load: Callable[[], Awaitable[Any]]) -> Any:
        now = self.clock()
        hit = self._cache.get((kind, name))
        if hit is not None and now - hit[0] < CACHE_SECONDS:
            return hit[1]
        if len(self._cache) > 10_000:
            self._cache.clear()
        value = await load()
        self._cache[(kind, name)] = (now, value)
        return value

    async def user(self, email: str) -> UserRecord | None:
        return await self._record("user", email, accountstore.find_user, f"/v1/users/{quote(email, safe='@')}",
                                  UserRecord)

    async def link(self, link_id: str) -> LinkRecord | None:
        return await self._record("link", link_id, accountstore.find_link, f"/v1/shares/{link_id}", LinkRecord)

    async def _record(self, kind: str, name: str, find: Callable[[Any, str], Any], path: str, cls: Any) -> Any:
        """One account record, cached: from the server's warehouse, else the sink's socket."""
        async def load() -> Any:
            if isinstance(self.warehouse, ServerWarehouse):
                return await self.warehouse._run(lambda: find(self.warehouse.client, name))
            found = await self._socket_get(path)
            return cls.from_json(found) if found else None

        return await self._cached(kind, name, load)

    async def sites(self) -> list[str]:
        """Every site with data (what an admin may pick)."""
        async def load() -> list[str]:
            from tally.api.sql import Sql

            found = await self.warehouse.rows(Sql("SELECT DISTINCT site FROM site_stats_monthly ORDER BY site", {}))
            return [r[0] for r in found]

        return await self._cached("sites", "", load)

    def forget(self, kind: str, name: str) -> None:
        self._cache.pop((kind, name), None)

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()
