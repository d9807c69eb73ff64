"""Running analysts' SQL: through the sink's endpoint while it owns the embedded
warehouse, directly otherwise. Always with the engine's readonly=1."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

from tally.sinks.warehouse import connect

from tally.config import Settings


class QueryError(RuntimeError):
    pass


def run_sql(settings: Settings, sql: str, fmt: str = "PrettyCompact") -> bytes:
    if settings.embedded_clickhouse:
        url = f"http://{settings.query_host}:{settings.query_port}/query"
        req = urllib.request.Request(url, data=json.dumps({"sql": sql, "format": fmt}).encode(),
                                     headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=60) as resp:
                return resp.read()
        except urllib.error.HTTPError as exc:
            raise QueryError(json.loads(exc.read() or b"{}").get("detail", str(exc))) from None
        except urllib.error.URLError:
            pass  # stack is down: open the warehouse ourselves
    client = connect(settings, readonly=True)
    try:
        return client.raw_query(sql, fmt=fmt)
    except Exception as exc:
        raise QueryError(str(exc).strip()) from None
    finally:
        client.close()
