"""A small read-only SQL endpoint on the process that owns the embedded warehouse.

chDB allows one process per data directory, so while the stack runs, `tally
query` reaches the warehouse through this endpoint. Every query runs with the
engine's own `readonly=1` (a read-only session), so analysts' SQL cannot modify or drop data.
"""

from __future__ import annotations

import json
import logging
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from clickhouse_connect.driver.client import Client
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

log = logging.getLogger(__name__)
MAX_BODY = 1 << 20


def serve(client: Client, lock: threading.Lock, host: str, port: int) -> ThreadingHTTPServer:
    """Serve queries on `client`, which must be a read-only client (warehouse.connect(readonly=True))."""
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:  # no client addresses in logs
            return

        def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
            self.send_response(status)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            if self.path == "/healthz":
                self._send(200, b'{"status":"ok"}')
            elif self.path == "/metrics":  # the sink's counters (rows, rejects, insert failures, paused)
                self._send(200, generate_latest(), CONTENT_TYPE_LATEST)
            else:
                self._send(404, b'{"detail":"not found"}')

        def do_POST(self) -> None:
            if self.path != "/query":
                self._send(404, b'{"detail":"not found"}')
                return
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                self._send(413, b'{"detail":"query too large"}')
                return
            try:
                req = json.loads(self.rfile.read(length))
                sql, fmt = str(req["sql"]), str(req.get("format", "JSONCompact"))
            except (ValueError, KeyError, TypeError):
                self._send(400, b'{"detail":"body must be {\\"sql\\": ..., \\"format\\": ...}"}')
                return
            try:
                with lock:
                    out = client.raw_query(sql, fmt=fmt)
            except Exception as exc:
                self._send(400, json.dumps({"detail": str(exc).strip()[:2000]}).encode())
                return
            self._send(200, out, "application/octet-stream")

    server = ThreadingHTTPServer((host, port), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="query-endpoint", daemon=True).start()
    return server
