"""A small ClickHouse-HTTP-interface server backed by chDB, for tests only.

No ClickHouse server binary is available here, so tests that need "a ClickHouse
server at a URL" (the sink's server mode, a real outage: the server process
stopped and started again) run this: the real ClickHouse engine (chDB) behind the
subset of the HTTP interface clickhouse-connect uses. Each request gets its own
chDB session, so URL settings such as readonly=1 or insert_deduplication_token
apply to that request only, as on a real server.

    python tests/chdb_http.py <data dir> <port>
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, urlsplit

import chdb
from clickhouse_connect.driver._backend.chdb_backend import _decompress

TRANSPORT = {"query", "database", "default_format", "query_id", "session_id", "session_timeout",
             "session_check", "compress", "decompress", "wait_end_of_query", "client_protocol_version",
             "enable_http_compression", "send_progress_in_http_headers", "http_headers_progress_interval_ms",
             "buffer_size", "quota_key", "role", "user", "password"}
_FORMAT = re.compile(r"\bFORMAT\s+(\w+)\s*;?\s*$", re.IGNORECASE)
_BODY_INSERT = re.compile(rb"^\s*(INSERT\s+INTO\s+[^\n]*?\s+FORMAT\s+\w+)[ \t]*\r?\n", re.IGNORECASE)
_INPUT = re.compile(r"\binput\(", re.IGNORECASE)
_INSERT = re.compile(r"^\s*(INSERT\s+INTO\s+.*?)\s+FORMAT\s+(\w+)\s*$", re.IGNORECASE | re.DOTALL)


def main() -> None:
    data_dir, port = sys.argv[1], int(sys.argv[2])
    engine = chdb.connect(data_dir)  # keeps the engine open for the per-request sessions
    engine.query("SELECT 1")

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, fmt: str, *args: object) -> None:
            return

        def _reply(self, status: int, body: bytes, headers: dict[str, str]) -> None:
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() != "chunked":
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))
            out = bytearray()
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline()

        def do_GET(self) -> None:
            if urlsplit(self.path).path == "/ping":
                self._reply(200, b"Ok.\n", {})
            else:
                self.do_POST()

        def do_POST(self) -> None:
            params = dict(parse_qsl(urlsplit(self.path).query, keep_blank_values=True))
            body = self._body()
            if self.headers.get("Content-Encoding"):
                body = _decompress(body, self.headers["Content-Encoding"])
            sql = params.get("query")
            if sql is None:  # the statement is in the body, for an insert followed by its data
                head = _BODY_INSERT.match(body)
                if head:
                    sql, body = head[1].decode(), body[head.end():]
                else:
                    sql, body = body.decode(), b""
            settings = {k: v for k, v in params.items() if k not in TRANSPORT and not k.startswith("param_")}
            query_params = {k[6:]: v for k, v in params.items() if k.startswith("param_")}
            conn = chdb.connect(data_dir)
            tmp = None
            try:
                # readonly last: the request's own settings are checked against the
                # user's profile, then the query runs read-only, as on a server.
                for k, v in sorted(settings.items(), key=lambda kv: kv[0] == "readonly"):
                    conn.query(f"SET {k} = '{v}'")
                m = _INSERT.match(sql) if body else None
                if m:
                    fd, tmp = tempfile.mkstemp(suffix=".bin")
                    with os.fdopen(fd, "wb") as fh:
                        fh.write(body)
                    source = _INPUT.search(m[1])
                    if source:  # INSERT ... SELECT ... FROM input(structure): the body is the input
                        sql = f"{m[1][:source.start()]}file('{tmp}', '{m[2]}', {m[1][source.end():]}"
                    else:
                        sql = f"{m[1]} FROM INFILE '{tmp}' FORMAT {m[2]}"
                    fmt = "TabSeparated"
                else:
                    f = _FORMAT.search(sql)
                    fmt = f[1] if f else params.get("default_format", "TabSeparated")
                    if f:
                        sql = sql[:f.start()]
                res = conn.query(sql, fmt, params=query_params)
                out = res.bytes() if res is not None else b""
                summary = {"read_rows": "0", "written_rows": "0"}
                self._reply(200, out, {"X-ClickHouse-Format": fmt, "X-ClickHouse-Timezone": "UTC",
                                       "X-ClickHouse-Summary": json.dumps(summary)})
            except Exception as exc:
                msg = str(exc)
                code = re.search(r"Code: (\d+)", msg)
                self._reply(500, msg.encode(), {"X-ClickHouse-Exception-Code": code[1] if code else "1000"})
            finally:
                conn.close()
                if tmp:
                    os.unlink(tmp)

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    server.serve_forever()


if __name__ == "__main__":
    main()
