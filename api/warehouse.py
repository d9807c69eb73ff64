"""How the dashboard reads: the sink's Unix socket (embedded chDB, which the sink owns)
or the server's read-only dashboard user. Same two calls either way."""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

import orjson
from clickhouse_connect.driver.exceptions import OperationalError
from tally.api.sql import Sql
from tally.sinks import keystore
from tally.sinks.keystore import KeyRecord
from tally.sinks.sqlguard import engine_message
from tally.sinks.sqlsocket import ANSWER, HEADER

from tally.config import Settings


class Unavailable(RuntimeError):
    """The warehouse cannot be reached (the sink is down)."""


class QueryFailed(RuntimeError):
    """The engine refused or failed a query; the message is its own."""


class Warehouse(Protocol):
    async def rows(self, sql: Sql) -> list[list[Any]]: ...

    async def find_key(self, key_id: str) -> KeyRecord | None: ...

    async def close(self) -> None: ...


class FramedPool:
    """Kept connections to the sink's framed socket (sinks/sqlsocket.py): a request is a
    length-prefixed JSON object, an answer a length, a status and the body. Over HTTP on
    the sink's other socket the same queries cost 0.8 ms more each (aiohttp's client,
    server and executor hop; measured), a fifth of an aggregate query's own time.

    Each connection is a plain protocol (`_Framed`) whose answer resolves one future:
    asyncio's streams and `asyncio.timeout` cost the dashboard about 0.15 ms of CPU per
    query on top of that (py-spy, bench/api.py's load)."""

    def __init__(self, path: str, timeout: float, keep: int = 8) -> None:
        self.path = path
        self.timeout = timeout
        self.keep = keep
        self.idle: list[_Framed] = []

    async def call(self, request: dict[str, Any]) -> tuple[int, bytes]:
        body = orjson.dumps(request)
        frame = HEADER.pack(len(body)) + body
        while self.idle:  # a kept connection the sink closed meanwhile (it restarted) fails before answering
            try:
                return await self._exchange(self.idle.pop(), frame)
            except _Stale:
                continue
        loop = asyncio.get_running_loop()
        try:
            _, conn = await loop.create_unix_connection(_Framed, self.path)
        except OSError as exc:
            raise Unavailable(f"the sink's warehouse socket does not answer ({exc}); is the sink running?") from None
        try:
            return await self._exchange(conn, frame)
        except _Stale:
            raise Unavailable("the sink closed the connection without answering") from None

    async def _exchange(self, conn: _Framed, frame: bytes) -> tuple[int, bytes]:
        try:
            answer = await conn.exchange(frame, self.timeout)
        except (OSError, TimeoutError) as exc:  # _Stale goes up: call() retries on a new connection
            raise Unavailable(f"the sink's read service failed to answer ({type(exc).__name__})") from None
        if len(self.idle) < self.keep:
            self.idle.append(conn)
        else:
            conn.close()
        return answer

    async def close(self) -> None:
        for conn in self.idle:
            conn.close()
        self.idle.clear()


class _Stale(Exception):
    """A kept connection the other side had closed: retried on a new one."""


class _Framed(asyncio.Protocol):
    """One connection to the framed socket, one request at a time. Anything but a whole
    answer to the request in flight (a timeout, a cut, bytes nobody asked for) closes it."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.waiter is None or self.waiter.done():
            self.close()  # an answer nobody asked for
            return
        if len(self.buffer) < ANSWER.size:
            return
        size, status = ANSWER.unpack_from(self.buffer)
        if len(self.buffer) < ANSWER.size + size:
            return
        if len(self.buffer) > ANSWER.size + size:
            self.close()  # more than one answer
            self.waiter.set_exception(ConnectionError("the sink answered more than was asked"))
            return
        body = bytes(self.buffer[ANSWER.size:])
        self.buffer.clear()
        self.waiter.set_result((status, body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.waiter is not None and not self.waiter.done():
            # Closed before a byte of the answer: the request never ran (the sink restarted).
            self.waiter.set_exception(ConnectionError("cut mid-answer") if self.buffer else _Stale())

    async def exchange(self, frame: bytes, timeout: float) -> tuple[int, bytes]:
        if self.closed or self.transport is None or self.transport.is_closing():
            raise _Stale
        loop = asyncio.get_running_loop()
        self.waiter = waiter = loop.create_future()
        self.transport.write(frame)
        timer = loop.call_later(timeout, self._expire, waiter)
        try:
            return await waiter
        except BaseException:
            self.close()  # cancelled, timed out or cut: what comes later answers nobody
            raise
        finally:
            timer.cancel()
            self.waiter = None

    def _expire(self, waiter: asyncio.Future[tuple[int, bytes]]) -> None:
        if not waiter.done():
            waiter.set_exception(TimeoutError())

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class SocketWarehouse:
    """Through the sink's read service (its framed socket), guarded like any SQL there."""

    def __init__(self, settings: Settings) -> None:
        self.pool = FramedPool(str(settings.sql_socket_path), settings.analyst_max_seconds * 4 + 30)

    async def rows(self, sql: Sql) -> list[list[Any]]:
        status, body = await self.pool.call({"sql": sql.text, "params": sql.params})
        if status == 503:
            raise Unavailable(orjson.loads(body).get("error", "busy"))
        if status != 200:
            raise QueryFailed(orjson.loads(body or b"{}").get("error", f"status {status}"))
        return orjson.loads(body)["data"]

    async def find_key(self, key_id: str) -> KeyRecord | None:
        status, body = await self.pool.call({"key_id": key_id})
        if status == 404:
            return None
        if status != 200:
            raise Unavailable(f"key lookup failed: status {status}")
        return KeyRecord.from_json(orjson.loads(body))

    async def close(self) -> None:
        await self.pool.close()


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
