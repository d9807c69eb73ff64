"""A lean open-loop HTTP/1.1 load client for the benchmarks: prebuilt requests written on
keep-alive connections, one request in flight per connection (as a browser or aiohttp's
connector does, no pipelining), reading back only the status line and the body's framing
(Content-Length, or chunked). Far cheaper per request than an aiohttp ClientSession, so the
load generator leaves more of a shared machine to what it measures.

Connections open on demand up to `connections`; a request that finds none free waits in a FIFO.
Idle connections are reused last-in first-out, so a light load keeps few connections busy. A
request without an answer after `timeout` seconds (waiting for a connection included) fails,
and so does every request on a connection that drops or answers something unparsable.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from typing import cast

FAILED = -1  # the status passed to on_done for a request without an answer

Done = Callable[[object, int, float], None]  # (tag, status or FAILED, monotonic time of the answer)


class _Conn(asyncio.Protocol):
    def __init__(self, client: LoadClient) -> None:
        self.client = client
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.tag: object = None
        self.busy = False
        self.since = 0.0  # when the current request was written
        self.status = 0
        self.body_end = -1  # offset in buf where the current answer ends, once known
        self.chunked = False
        self.chunk_at = 0  # chunked body: offset in buf of the next chunk's size line
        self.close_after = False

    # asyncio callbacks

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not an asyncio.Transport subclass
        self.client._ready(self)

    def data_received(self, data: bytes) -> None:
        if not self.busy:  # nothing asked: a server that talks out of turn
            self.abort()
            return
        self.buf += data
        try:
            self._parse()
        except ValueError:
            self.abort()

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.client._lost(self)

    # the protocol

    def send(self, tag: object, request: bytes) -> None:
        assert self.transport is not None
        self.tag, self.busy, self.since = tag, True, time.monotonic()
        self.status, self.body_end, self.chunked, self.close_after = 0, -1, False, False
        self.chunk_at = 0
        self.buf.clear()
        self.transport.write(request)

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def _parse(self) -> None:
        buf = self.buf
        if not self.status:
            head_end = buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(buf[:head_end]).split(b"\r\n")
            parts = head[0].split(b" ", 2)
            if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
                raise ValueError("not an HTTP/1.x status line")
            self.status = int(parts[1])
            length = 0
            for line in head[1:]:
                name, _, value = line.partition(b":")
                name = name.strip().lower()
                if name == b"content-length":
                    length = int(value)
                elif name == b"transfer-encoding" and b"chunked" in value.lower():
                    self.chunked = True
                elif name == b"connection" and value.strip().lower() == b"close":
                    self.close_after = True
            del buf[:head_end + 4]
            self.body_end = -1 if self.chunked else length
        if self.chunked:
            self.body_end = self._chunks_end()
            if self.body_end < 0:
                return
        if len(buf) < self.body_end:
            return
        if len(buf) > self.body_end:
            raise ValueError("more bytes than one answer")
        tag, status = self.tag, self.status
        self.tag, self.busy = None, False
        self.client._answered(self, tag, status, self.close_after)

    def _chunks_end(self) -> int:
        """Where a chunked body ends in buf (after the last chunk and the blank line), or -1 if
        not yet; walks the chunk sizes, skipping the data, so data that looks like an end is data."""
        buf = self.buf
        while True:
            line_end = buf.find(b"\r\n", self.chunk_at)
            if line_end < 0:
                return -1
            size = int(bytes(buf[self.chunk_at:line_end]).split(b";", 1)[0], 16)
            if size == 0:  # no trailers expected: the blank line ends the body
                end = line_end + 4
                if len(buf) < end:
                    return -1
                if buf[line_end + 2:end] != b"\r\n":
                    raise ValueError("trailers after a chunked body")
                return end
            if len(buf) < line_end + 2 + size + 2:
                return -1
            self.chunk_at = line_end + 2 + size + 2


class LoadClient:
    """Send prebuilt requests to one host:port; on_done(tag, status, t) once per request."""

    def __init__(self, host: str, port: int, connections: int, on_done: Done, timeout: float = 30.0) -> None:
        self.host, self.port, self.connections, self.timeout = host, port, connections, timeout
        self.on_done = on_done
        self.idle: list[_Conn] = []  # LIFO: the hottest connection first
        self.conns: set[_Conn] = set()  # open or opening
        self.waiting: deque[tuple[object, bytes, float]] = deque()  # (tag, request, queued at)
        self.in_flight = 0  # requests submitted and not yet done
        self.connect_errors = 0
        self._reaper: asyncio.Task | None = None
        self._opening: set[asyncio.Task] = set()

    async def __aenter__(self) -> LoadClient:
        self._reaper = asyncio.create_task(self._reap())
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._reaper is not None:
            self._reaper.cancel()
        for task in list(self._opening):
            task.cancel()
        for conn in list(self.conns):
            if conn.transport is not None:
                conn.transport.close()

    def submit(self, tag: object, request: bytes) -> None:
        self.in_flight += 1
        while self.idle:
            conn = self.idle.pop()
            if conn.transport is not None and not conn.transport.is_closing():
                conn.send(tag, request)
                return
        self.waiting.append((tag, request, time.monotonic()))
        if len(self.conns) < self.connections:
            self._open()

    def _open(self) -> None:
        conn = _Conn(self)
        self.conns.add(conn)
        loop = asyncio.get_running_loop()
        task = loop.create_task(loop.create_connection(lambda: conn, self.host, self.port))
        self._opening.add(task)
        task.add_done_callback(lambda t: self._opened(t, conn))

    def _opened(self, task: asyncio.Task, conn: _Conn) -> None:
        self._opening.discard(task)
        if task.cancelled() or task.exception() is not None:
            self.conns.discard(conn)
            self.connect_errors += 1
            if self.waiting and not self.conns:  # nothing left to carry them: fail the oldest
                tag, _, _ = self.waiting.popleft()
                self._finish(tag, FAILED)
                if self.waiting:
                    self._open()

    def _ready(self, conn: _Conn) -> None:
        if self.waiting:
            tag, request, _ = self.waiting.popleft()
            conn.send(tag, request)
        else:
            self.idle.append(conn)

    def _answered(self, conn: _Conn, tag: object, status: int, close: bool) -> None:
        self._finish(tag, status)
        if close:
            conn.abort()
        else:
            self._ready(conn)

    def _lost(self, conn: _Conn) -> None:
        self.conns.discard(conn)
        if conn.busy:
            conn.busy = False
            self._finish(conn.tag, FAILED)
        if self.waiting and len(self.conns) < self.connections:
            self._open()

    def _finish(self, tag: object, status: int) -> None:
        self.in_flight -= 1
        self.on_done(tag, status, time.monotonic())

    async def _reap(self) -> None:
        """Once a second: fail what waited longer than the timeout, in the queue or on the wire."""
        while True:
            await asyncio.sleep(1.0)
            limit = time.monotonic() - self.timeout
            while self.waiting and self.waiting[0][2] < limit:
                tag, _, _ = self.waiting.popleft()
                self._finish(tag, FAILED)
            for conn in list(self.conns):
                if conn.busy and conn.since < limit:
                    conn.abort()  # connection_lost fails its request
