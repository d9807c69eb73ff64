"""The request an event is tracked in: its request_id and tenant scope, in a context variable.

The request middleware (middleware.py) sets it for the duration of each request, so
events tracked while handling the request carry `request_id` (seed 004's tracing key)
without the caller passing it, and track_performance() finds the tenant scope. Context
variables follow asyncio tasks and threads, so concurrent requests never see each
other's context.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any

from tally.schemas.catalog import is_safe_id

from tally.ids import uuid7


class RequestContext:
    """One request's context. Its request_id is made on first use: most requests track
    nothing, and a fresh UUIDv7 per request would be most of the middleware's cost."""

    __slots__ = ("_header", "_id", "scope")
    _lock = threading.Lock()

    def __init__(self, header: Any = None, scope: tuple[str, str] | None = None) -> None:
        self._header = header  # the caller's X-Request-ID, unchecked yet
        self._id: str | None = None
        self.scope = scope  # (tenant_id, workspace_id) when known

    @property
    def request_id(self) -> str:
        if self._id is None:
            with self._lock:  # threads of one request see one id
                if self._id is None:
                    self._id = request_id_from(self._header)
        return self._id


CURRENT: ContextVar[RequestContext | None] = ContextVar("tally_request", default=None)
current = CURRENT.get


def request_id_from(header: Any) -> str:
    """The caller's X-Request-ID when it is a safe opaque id, else a fresh UUIDv7."""
    if isinstance(header, bytes):
        header = header.decode("latin-1")
    return header if isinstance(header, str) and header and is_safe_id(header) else str(uuid7())


@contextmanager
def request_context(request_id: str | None = None, scope: tuple[str, str] | None = None) -> Iterator[RequestContext]:
    """Events tracked inside carry this request_id (a fresh UUIDv7 when none is given)."""
    ctx = RequestContext(request_id, scope)
    token = CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        CURRENT.reset(token)


def with_request_id(metadata: Any) -> Any:
    """metadata plus the current request_id, unless there is no request, the caller gave
    one, or metadata is not a mapping (the validator then says why)."""
    ctx = CURRENT.get()
    if ctx is None:
        return metadata
    if metadata is None:
        return {"request_id": ctx.request_id}
    if isinstance(metadata, Mapping) and "request_id" not in metadata:
        return {**metadata, "request_id": ctx.request_id}
    return metadata
