"""The beacon routes' answers, serialized once a second instead of built per request.

aiohttp makes every answer from a `Response`: a header multidict, the status line
formatted, Content-Length set and removed again (204), Date and Server added, all
serialized, and two coroutines to write it: about a tenth of the collector's CPU per
beacon under load. A beacon route has few answers (204, or Plausible's 202 "ok",
times the CORS headers of the request's origin) and only their Date changes, once a
second; so each answer's bytes are made when its second starts, and a request writes
them as they are (`Prepared`). They are the bytes aiohttp writes for the same
`Response` (tests/test_collector_units.py compares them).

Only HTTP/1.1 requests that keep their connection open get prepared bytes (nearly
all); an HTTP/1.0 request or one that closes its connection gets aiohttp's `Response`,
whose Connection header depends on both.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from email.utils import formatdate
from http import HTTPStatus

from aiohttp import HttpVersion11, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.http import SERVER_SOFTWARE

from tally.caches import bounded_put

ANY_ORIGIN = {"Access-Control-Allow-Origin": "*"}
VARY_ORIGIN = {"Vary": "Origin"}
MAX_ORIGINS = 256  # answers kept per route, one per allowed origin as sent


def cors_headers(origin: str | None) -> Mapping[str, str]:
    """The CORS headers of an answer: `origin` is "*" (any origin allowed), the request's
    allowed origin, or None (not allowed: no Access-Control-Allow-Origin)."""
    if origin == "*":
        return ANY_ORIGIN
    if origin is None:
        return VARY_ORIGIN
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


class Prepared:
    """An answer whose bytes are ready: what aiohttp's server asks of a handler's response
    (status, keep_alive, prepare, write_eof), without a `StreamResponse`."""

    __slots__ = ("status", "_data")
    keep_alive = True  # only requests that keep their connection get one
    __http_exception__ = False  # aiohttp looks this up on every response

    def __init__(self, status: int, data: bytes) -> None:
        self.status, self._data = status, data

    async def prepare(self, request: web.BaseRequest) -> AbstractStreamWriter:
        writer = request.writer
        await writer.write_eof(self._data)  # one write, then drain as aiohttp does
        return writer

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class _Serialized:
    """One answer's bytes around its Date, and the bytes of the current second."""

    __slots__ = ("head", "tail", "second", "data")

    def __init__(self, head: bytes, tail: bytes) -> None:
        self.head, self.tail, self.second, self.data = head, tail, -1, b""


class RouteAnswer:
    """A beacon route's answer to an accepted beacon: `status` with an optional text body."""

    def __init__(self, status: int, text: str | None = None) -> None:
        self.status, self.text = status, text
        self._reason = HTTPStatus(status).phrase
        self._body = b"" if text is None else text.encode()
        self._by_origin: dict[str | None, _Serialized] = {}

    def response(self, origin: str | None) -> web.Response:
        """aiohttp's Response of this answer."""
        return web.Response(status=self.status, text=self.text, headers=cors_headers(origin))

    def answer(self, request: web.BaseRequest, origin: str | None) -> Prepared | web.Response:
        """This answer to `request`, whose CORS origin (see cors_headers) is `origin`."""
        if not (request.keep_alive and request.version == HttpVersion11):
            return self.response(origin)
        s = self._by_origin.get(origin)
        if s is None:
            if origin is not None and not origin.isascii():
                return self.response(origin)  # aiohttp's own rules for encoding such a header
            s = self._serialize(origin)
        now = int(time.time())
        if now != s.second:
            s.second, s.data = now, s.head + formatdate(now, usegmt=True).encode() + s.tail
        return Prepared(self.status, s.data)

    def _serialize(self, origin: str | None) -> _Serialized:
        """What aiohttp writes for `response(origin)`: its headers in order (the CORS ones,
        then Content-Type and Content-Length when there is a body), Date, Server."""
        lines = [f"HTTP/1.1 {self.status} {self._reason}"]
        lines += [f"{k}: {v}" for k, v in cors_headers(origin).items()]
        if self.text is not None:
            lines += ["Content-Type: text/plain; charset=utf-8", f"Content-Length: {len(self._body)}"]
        head = ("\r\n".join(lines) + "\r\nDate: ").encode("latin-1")
        tail = f"\r\nServer: {SERVER_SOFTWARE}\r\n\r\n".encode("latin-1") + self._body
        return bounded_put(self._by_origin, origin, _Serialized(head, tail), MAX_ORIGINS)


NO_CONTENT = RouteAnswer(204)
ACCEPTED_OK = RouteAnswer(202, "ok")  # Plausible answers its event API with 202 "ok"
