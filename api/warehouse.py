"""How the dashboard reads: the sink's Unix socket (embedded chDB, which the sink owns)
or the server's read-only dashboard user. Same two calls either way."""

from __future__ import annotations

import asyncio
import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import aiohttp
import orjson
from clickhouse_connect.driver.exceptions import OperationalError
from tally.api.sql import Sql
from tally.sinks import keystore
from tally.sinks.keystore import KeyRecord
from tally.sinks.sqlguard import engine_message

from tally.config import Settings


class Unavailable(RuntimeError):
    """The warehouse cannot be reached (the sink is down)."""


class QueryFailed(RuntimeError):
    """The engine refused or failed a query; the message is its own."""


class Warehouse(Protocol):
    async def rows(self, sql: Sql) -> list[list[Any]]: ...

    async def find_key(self, key_id: str) -> KeyRecord | None: ...

    async def close(self) -> None: ...


class SocketWarehouse:
    """Through the sink's read service (sinks/readservice.py), guarded like any SQL there."""

    def __init__(self, settings: Settings) -> None:
        self.path = str(settings.socket_path)
        self.timeout = aiohttp.ClientTimeout(total=settings.analyst_max_seconds * 4 + 30)
        self._session: aiohttp.ClientSession | None = None

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            self._session = aiohttp.ClientSession(connector=aiohttp.UnixConnector(path=self.path), timeout=self.timeout)
        return self._session

    async def _call(self, method: str, route: str, body: Any = None) -> tuple[int, bytes]:
        try:
            async with self.session.request(method, f"http://sink{route}", json=body) as resp:
                return resp.status, await resp.read()
        except (aiohttp.ClientConnectionError, FileNotFoundError) as exc:
            raise Unavailable(f"the sink's warehouse socket does not answer ({exc}); is the sink running?") from None

    async def rows(self, sql: Sql) -> list[list[Any]]:
        status, body = await self._call("POST", "/v1/sql", {"sql": sql.text, "params": sql.params, "format": "JSONCompact"})
        if status == 503:
            raise Unavailable(json.loads(body).get("error", "busy"))
        if status != 200:
            raise QueryFailed(json.loads(body or b"{}").get("error", f"HTTP {status}"))
        return orjson.loads(body)["data"]

    async def find_key(self, key_id: str) -> KeyRecord | None:
        status, body = await self._call("GET", f"/v1/keys/{key_id}")
        if status == 404:
            return None
        if status != 200:
            raise Unavailable(f"key lookup failed: HTTP {status}")
        return KeyRecord.from_json(json.loads(body))

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()


class ServerWarehouse:
    """Server mode: the dashboard's own read-only user (TALLY_DASHBOARD_CLICKHOUSE_URL)."""

    def __init__(self, settings: Settings) -> None:
        from tally.sinks.warehouse import connect_reader

        # No session: the executor's threads query concurrently, which one HTTP session refuses.
        self.client = connect_reader(settings, settings.dashboard_clickhouse_url, "TALLY_DASHBOARD_CLICKHOUSE_URL",
                                     autogenerate_session_id=False)
        self.executor = ThreadPoolExecutor(4, thread_name_prefix="warehouse")

    async def _run(self, fn: Any) -> Any:
        try:
            return await asyncio.get_running_loop().run_in_executor(self.executor, fn)
        except (OSError, OperationalError) as exc:
            raise Unavailable(str(exc)) from None

    async def rows(self, sql: Sql) -> list[list[Any]]:
        def query() -> list[list[Any]]:
            try:
                return [list(r) for r in self.client.query(sql.text, parameters=sql.params).result_rows]
            except (OSError, OperationalError):
                raise
            except Exception as exc:
                raise QueryFailed(engine_message(exc)) from None

        return await self._run(query)

    async def find_key(self, key_id: str) -> KeyRecord | None:
        return await self._run(lambda: keystore.find(self.client, key_id))

    async def close(self) -> None:
        self.executor.shutdown(wait=False)
        self.client.close()


def open_warehouse(settings: Settings) -> Warehouse:
    return SocketWarehouse(settings) if settings.embedded_clickhouse else ServerWarehouse(settings)
