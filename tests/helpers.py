"""Small helpers for tests that drive real components over the wire."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tally.config import Settings


def post_json(url: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
              timeout: float = 15) -> tuple[int, bytes, dict[str, str]]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def collect_url(settings: Settings) -> str:
    return f"http://{settings.collector_host}:{settings.collector_port}/api/v1/collect"


def query_rows(settings: Settings, sql: str) -> list[list[Any]]:
    """Rows of a read-only query, through the sink's endpoint or chDB directly."""
    from tally.sinks.query import run_sql

    return json.loads(run_sql(settings, sql, "JSONCompact"))["data"]
