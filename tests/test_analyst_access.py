"""Analyst access to the running sink, on the real broker and the real engine.

- The escape vectors are refused through the sink's Unix socket and through `tally query`.
- Nothing on TCP serves SQL by default; the socket is the owner's only (0600 in a 0700
  directory) and another local user cannot connect to it.
- Heavy analyst queries are cut off by the engine's limits while the sink keeps
  ingesting: records produced while they run are stored, and the sink's consumer lag
  drains to zero, before the heavy queries come back.
- With TALLY_QUERY_TOKEN the TCP endpoint serves SQL, but only with the token, an
  allowed Host, no Origin header and a JSON body, and through the same guard.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import struct
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from tally.ops.stack import http_ok
from tally.sinks.query import SinkSocket

from tests.conftest import REPO, Env, wait_for
from tests.helpers import query_rows
from tests.sink_records import Records, recent_days

pytestmark = pytest.mark.integration

SECRET = Path("/etc/hostname").read_text().strip()


def tally(env: Env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tally.ops", *args], cwd=REPO, env=env.child_env(),
                          capture_output=True, text=True, timeout=120)


def sql(s, text: str) -> tuple[int, dict | bytes]:
    status, body = SinkSocket(s.socket_path, timeout=120).request("POST", "/v1/sql", {"sql": text, "format": "JSONCompact"})
    return status, (json.loads(body) if status != 200 else body)


def framed(s, request: dict | bytes, raw: bool = False, claimed: int | None = None) -> tuple[int, dict | bytes]:
    """One request on the sink's framed socket (sinks/sqlsocket.py), on a new connection;
    a malformed frame (raw bytes) must close it after the answer."""
    body = request if raw else json.dumps(request).encode()
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(120)
        conn.connect(str(s.sql_socket_path))
        conn.sendall(struct.pack(">I", len(body) if claimed is None else claimed) + body)
        stream = conn.makefile("rb")
        size, status = struct.unpack(">IH", stream.read(6))
        data = stream.read(size)
        if raw:
            assert stream.read(1) == b""
    return status, (json.loads(data) if status != 200 else data)


def unanswered_or_refused(s, data: bytes) -> bool:
    """Send `data` and close the sending side: the read service answers 400 or nothing, and closes."""
    with socket.socket(socket.AF_UNIX) as conn:
        conn.settimeout(60)
        conn.connect(str(s.sql_socket_path))
        conn.sendall(data)
        conn.shutdown(socket.SHUT_WR)
        answer = conn.makefile("rb").read()
    if not answer:
        return True
    size, status = struct.unpack(">IH", answer[:6])
    return status == 400 and len(answer) == 6 + size


def http(url: str, body: bytes | None = None, headers: dict | None = None) -> tuple[int, str]:
    req = urllib.request.Request(url, data=body, headers=headers or {}, method="POST" if body is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def listening_ports(pid: int) -> set[int]:
    """TCP ports the process listens on: its socket inodes matched against /proc/net/tcp*."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[8:-1])
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            parts = line.split()
            if parts[3] == "0A" and parts[9] in inodes:  # 0A: LISTEN
                ports.add(int(parts[1].rsplit(":", 1)[1], 16))
    return ports


VECTORS = [
    ("SELECT file('/etc/hostname')", "`file`"),
    ("SELECT * FROM pageviews INTO OUTFILE '{out}' TRUNCATE", "INTO OUTFILE"),
    ("SELECT * FROM url('http://127.0.0.1:9/', CSV, 'a String')", "`url`"),
    ("SELECT * FROM remote('127.0.0.1:9', default.pageviews)", "`remote`"),
    ("SELECT count() FROM pageviews SETTINGS max_execution_time = 0", "SETTINGS"),
    ("SELECT * FROM system.users", "`system.users`"),
    ("SELECT * FROM api_keys", "`api_keys`"),
    ("SELECT 1; SELECT file('/etc/hostname')", "Multi-statements"),
    ("SELECT dictGet('d', 'a', toUInt64(1))", "`dictGet`"),
]


@pytest.fixture
def analyst_env(tally_env: Env) -> Env:
    tally_env.vars.update({"TALLY_ANALYST_MAX_SECONDS": "20", "TALLY_ANALYST_MAX_MEMORY_MB": "256",
                           "TALLY_ANALYST_MAX_ROWS_TO_READ": "1000000000000", "TALLY_ANALYST_CONCURRENCY": "2"})
    return tally_env


def test_escapes_refused_on_the_socket_and_tally_query(analyst_env, spawn, tmp_path):
    s = analyst_env.settings
    sink = spawn(analyst_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink")
    out = tmp_path / "written.csv"
    for text, why in VECTORS:
        text = text.replace("{out}", str(out))
        status, body = sql(s, text)
        assert status == 400 and body["refused"] and why in body["error"], (text, status, body)
        assert SECRET not in json.dumps(body)
        res = tally(analyst_env, "query", text)
        assert res.returncode == 1 and why in res.stderr and SECRET not in res.stdout + res.stderr, (text, res.stderr)
        status, body = framed(s, {"sql": text, "params": {}})  # the dashboard's socket: the same guard
        assert status == 400 and body["refused"] and why in body["error"], (text, status, body)
    assert not out.exists()
    status, body = framed(s, {"sql": "SELECT count() FROM pageviews"})
    assert status == 200 and json.loads(body)["data"] == [[0]]
    for bad in (b"{not json", b"[1]", json.dumps({"sql": "SELECT 1", "format": "CSV"}).encode(),
                json.dumps({"key_id": 1}).encode()):
        status, body = framed(s, bad, raw=True)
        assert status == 400 and "request" in body["error"], (bad, body)
    status, body = framed(s, b"", raw=True, claimed=512 * 1024 + 1)  # answered before the body is read
    assert status == 400 and "at most" in body["error"]
    status, body = framed(s, b"", raw=True, claimed=2**32 - 1)
    assert status == 400 and "at most" in body["error"]
    for garbage in (b"\xff\xfe\x00garbage", bytes(range(256)), b"\x00" * 64):
        status, body = framed(s, garbage, raw=True)
        assert status == 400 and "request" in body["error"], (garbage, body)
    for params in ({"p": {"nested": [1]}}, {"p": "x" * 1000}, {"p": None}):  # values that are no UInt8
        status, body = framed(s, {"sql": "SELECT {p:UInt8}", "params": params})
        assert status == 400 and "error" in body, (params, status, body)
    # Cut short: a partial header, a body shorter than its length: the connection just ends.
    for cut in (b"\x00\x00", struct.pack(">I", 100) + b'{"sql": "SEL'):
        assert unanswered_or_refused(s, cut)
    status, body = framed(s, {"key_id": "000000000000"})
    assert status == 404
    assert query_rows(s, "SELECT count() FROM pageviews")[0][0] == 0  # analyst SQL still answers

    # Nothing on TCP serves SQL: every port the sink listens on refuses it.
    ports = listening_ports(sink.popen.pid)
    assert ports == {s.query_port}, ports
    for port in ports:
        for route in ("/v1/sql", "/query", "/sql"):
            status, _ = http(f"http://127.0.0.1:{port}{route}", json.dumps({"sql": "SELECT 1"}).encode(),
                             {"Content-Type": "application/json"})
            assert status in (404, 405), (port, route, status)
        assert http(f"http://127.0.0.1:{port}/healthz")[0] == 200

    # The sockets: the owner's only, and another user cannot connect.
    assert stat.S_IMODE(s.run_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(s.state_dir.stat().st_mode) == 0o700
    probe = ("import socket,sys\ns=socket.socket(socket.AF_UNIX)\n"
             "try:\n s.connect(sys.argv[1]); print('connected')\nexcept OSError as e: print(type(e).__name__)")
    for path in (s.socket_path, s.sql_socket_path):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        res = subprocess.run(["/usr/bin/python3", "-c", probe, str(path)], user=65534, group=65534,
                             capture_output=True, text=True, timeout=30)
        assert res.stdout.strip() == "PermissionError", res.stdout + res.stderr
    assert sink.alive(), sink.output()[-2000:]


def sink_rows(s) -> int:
    status, text = http(f"http://127.0.0.1:{s.query_port}/metrics")
    assert status == 200
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith('tally_sink_rows_total{table="pageviews"}')))


def sink_lag(s) -> int:
    from confluent_kafka import Consumer, TopicPartition

    topic = s.topic("pageviews.enriched")
    c = Consumer({"bootstrap.servers": s.bootstrap, "group.id": f"{s.app_id}-sink"})
    try:
        parts = [TopicPartition(topic, p) for p in range(s.topic_partitions)]
        committed = c.committed(parts, timeout=10)
        return sum(c.get_watermark_offsets(tp, timeout=10)[1] - max(tp.offset, 0) for tp in committed)
    finally:
        c.close()


def test_heavy_queries_are_cut_off_while_the_sink_keeps_ingesting(analyst_env, spawn):
    s = analyst_env.settings
    sink = spawn(analyst_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink")
    rec = Records(s, partitions=s.topic_partitions)
    rec.pageviews(200, recent_days(1))
    rec.flush()
    wait_for(lambda: sink_rows(s) == 200, 60, "first rows")

    # Two endless CPU-bound queries take both analyst slots; only the engine's time limit ends them.
    heavy = "SELECT count() FROM system.numbers_mt WHERE NOT ignore(sipHash64(number, number))"
    answers: list[tuple[int, dict | bytes]] = []
    threads = [threading.Thread(target=lambda: answers.append(sql(s, heavy))) for _ in range(2)]
    for t in threads:
        t.start()

    rec.pageviews(3000, recent_days(1))
    rec.flush()
    # Ingestion goes on: every record is stored and the lag drains while both still run.
    wait_for(lambda: sink_rows(s) == 3200 and sink_lag(s) == 0, 60, "rows stored during the heavy queries")
    assert all(t.is_alive() for t in threads) and not answers, "the heavy queries ended before the check"

    for t in threads:
        t.join(120)
    assert [status for status, _ in answers] == [400, 400]
    assert all("TIMEOUT_EXCEEDED" in body["error"] or "Timeout exceeded" in body["error"] for _, body in answers), answers
    # The other bombs, meanwhile refused or cut, and the sink is still ingesting and answering.
    assert "memory limit exceeded" in sql(s, "SELECT arrayMap(x -> repeat('a', 1000), range(1000000))")[1]["error"].lower()
    for text in ("SELECT file('/etc/hostname')", "SELECT * FROM pageviews INTO OUTFILE '/tmp/x' APPEND",
                 "SELECT * FROM url('http://127.0.0.1:9/', CSV, 'a String')"):
        assert sql(s, text)[1]["refused"]
    assert query_rows(s, "SELECT count() FROM pageviews")[0][0] == 3200
    assert sink.alive(), sink.output()[-2000:]


def test_sql_on_tcp_needs_the_token_an_allowed_host_and_no_origin(tally_env, spawn):
    token = "k" * 40
    tally_env.vars["TALLY_QUERY_TOKEN"] = token
    s = tally_env.settings
    spawn(tally_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink")
    url = f"http://127.0.0.1:{s.query_port}/v1/sql"
    body = json.dumps({"sql": "SELECT count() FROM pageviews", "format": "JSONCompact"}).encode()
    good = {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
    assert http(url, body, good)[0] == 200
    assert http(url, body, {**good, "Authorization": "Bearer " + "x" * 40})[0] == 401
    assert http(url, body, {"Content-Type": "application/json"})[0] == 401
    assert http(url, body, {**good, "Host": "attacker.example:8124"})[0] == 403  # DNS rebinding
    assert http(url, body, {**good, "Origin": "https://attacker.example"})[0] == 403  # a web page
    assert http(url, body, {**good, "Content-Type": "text/plain"})[0] == 415  # a simple cross-site POST
    status, text = http(url, json.dumps({"sql": "SELECT file('/etc/hostname')"}).encode(), good)
    assert status == 400 and json.loads(text)["refused"] and SECRET not in text
    # A negative Content-Length is a bad request, not an unbounded read.
    with socket.create_connection(("127.0.0.1", s.query_port), timeout=10) as conn:
        conn.sendall(b"POST /v1/sql HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: -1\r\n\r\n")
        assert conn.recv(200).split(b" ")[1] == b"400"
