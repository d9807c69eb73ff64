"""Running analysts' SQL, the one way for every reader (`tally query`, `tally reconcile`,
tests): the running sink's Unix socket while it owns the embedded warehouse, chDB
directly when the stack is down, and the read-only analyst user on a server.
Every path checks the SQL with the guard and runs it with the analyst limits.
"""

from __future__ import annotations

import http.client
import json
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from tally.sinks.sqlguard import Guard, Refused, engine_message

from tally.config import Settings

FORMATS = ("JSON", "JSONCompact", "JSONEachRow", "CSVWithNames", "TabSeparatedWithNames")


class QueryError(RuntimeError):
    def __init__(self, message: str, refused: bool = False) -> None:
        super().__init__(message)
        self.refused = refused


class _UnixConnection(http.client.HTTPConnection):
    def __init__(self, path: Path, timeout: float) -> None:
        super().__init__("localhost", timeout=timeout)
        self.path = str(path)

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(self.timeout)
        try:
            sock.connect(self.path)
        except OSError:
            sock.close()
            raise
        self.sock = sock


class SinkSocket:
    """HTTP over the sink's Unix socket (sinks/readservice.py)."""

    def __init__(self, path: Path, timeout: float = 120.0) -> None:
        self.path = path
        self.timeout = timeout

    def request(self, method: str, route: str, body: Any = None) -> tuple[int, bytes]:
        """(status, body). Raises ConnectionError (or FileNotFoundError) when no sink listens."""
        conn = _UnixConnection(self.path, self.timeout)
        try:
            data = json.dumps(body).encode() if body is not None else None
            conn.request(method, route, body=data, headers={"Content-Type": "application/json"} if data else {})
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def json(self, method: str, route: str, body: Any = None) -> Any:
        status, data = self.request(method, route, body)
        if status >= 400:
            raise QueryError(json.loads(data or b"{}").get("error", f"HTTP {status}"))
        return json.loads(data)


def execute(client: Client, guard: Guard, sql: str, fmt: str, params: Mapping[str, Any] | None = None,
            max_bytes: int | None = None) -> bytes:
    """Check `sql` with the guard, then run the engine's rendering of it on `client`."""
    if fmt not in FORMATS:
        raise QueryError(f"format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    try:
        checked = guard.check(client, sql, params)
    except Refused as exc:
        raise QueryError(f"refused: {exc}", refused=True) from None
    try:
        out = client.raw_query(checked.sql, fmt=fmt, parameters=dict(params) if params else None)
    except Exception as exc:
        raise QueryError(engine_message(exc)) from None
    if max_bytes is not None and len(out) > max_bytes:
        raise QueryError(f"the result is larger than TALLY_ANALYST_MAX_RESULT_MB ({max_bytes // 1048576} MiB)")
    return out


class AnalystSession:
    """One analyst's session: a read-only client with the limits, the guard in front.

    After a failed query the client is replaced: chDB hands what a query that failed
    mid-stream had already written to the next query on the same session."""

    def __init__(self, settings: Settings, guard: Guard | None = None) -> None:
        self.settings = settings
        self.guard = guard or Guard()
        self.max_bytes = settings.analyst_max_result_mb * 1024 * 1024
        self._client: Client | None = None

    def run(self, sql: str, fmt: str = "JSONCompact", params: Mapping[str, Any] | None = None) -> bytes:
        if self._client is None:
            self._client = analyst_client(self.settings)
        try:
            return execute(self._client, self.guard, sql, fmt, params, self.max_bytes)
        except QueryError:
            self.close()
            raise

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None


def analyst_client(settings: Settings) -> Client:
    """A read-only client with the analyst limits: chDB opened by this process, or the
    server's analyst user. (While the sink runs, embedded readers use its socket instead.)"""
    from tally.sinks.warehouse import connect, connect_reader

    if settings.embedded_clickhouse:
        return connect(settings, readonly=True)
    try:
        return connect_reader(settings, settings.analyst_clickhouse_url, "TALLY_ANALYST_CLICKHOUSE_URL")
    except LookupError as exc:
        raise QueryError(str(exc)) from None


def run_sql(settings: Settings, sql: str, fmt: str = "JSONCompact", params: Mapping[str, Any] | None = None) -> bytes:
    if settings.embedded_clickhouse:
        sock = SinkSocket(settings.socket_path, timeout=settings.analyst_max_seconds * 4 + 30)
        try:
            status, body = sock.request("POST", "/v1/sql", {"sql": sql, "format": fmt, "params": dict(params or {})})
        except (ConnectionError, FileNotFoundError):
            pass  # no sink listening: the stack is down, open the warehouse here
        else:
            if status == 200:
                return body
            detail = json.loads(body or b"{}")
            raise QueryError(detail.get("error", f"HTTP {status}"), refused=bool(detail.get("refused")))
    session = AnalystSession(settings)
    try:
        return session.run(sql, fmt, params)
    finally:
        session.close()
