"""bench/e2e.py's own machinery: the lean HTTP load client against a real aiohttp server, and
the poller's part coverage against the real ClickHouse engine (chDB)."""

from __future__ import annotations

import asyncio
import itertools
import json
import socket
from collections import Counter

import clickhouse_connect
import pytest
import uvloop
from aiohttp import web

from bench.e2e import Covered
from bench.http_load import FAILED, LoadClient


def request(path: str, body: bytes = b"{}") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: test\r\nContent-Type: text/plain\r\n"
            f"Content-Length: {len(body)}\r\n\r\n").encode() + body


async def serve(app: web.Application) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, port


def answers_app(peers: set[int], bodies: list[bytes]) -> web.Application:
    async def no_content(req: web.Request) -> web.Response:
        peers.add(req.transport.get_extra_info("peername")[1])  # type: ignore[union-attr]
        bodies.append(await req.read())
        return web.Response(status=204)

    async def accepted(req: web.Request) -> web.Response:
        await req.read()
        return web.Response(status=202, text="ok")

    async def bad(req: web.Request) -> web.Response:
        await req.read()
        return web.json_response({"detail": "site: not allowed"}, status=400)

    async def chunked(req: web.Request) -> web.StreamResponse:
        await req.read()
        resp = web.StreamResponse(status=200)
        resp.enable_chunked_encoding()
        await resp.prepare(req)
        await resp.write(b"0\r\n\r\n is not the end of this body")
        await resp.write(b"more")
        await resp.write_eof()
        return resp

    async def closing(req: web.Request) -> web.Response:
        await req.read()
        return web.Response(status=204, headers={"Connection": "close"})

    app = web.Application()
    app.add_routes([web.post("/204", no_content), web.post("/202", accepted), web.post("/400", bad),
                    web.post("/chunked", chunked), web.post("/close", closing)])
    return app


LOOPS = pytest.mark.parametrize("loop", [asyncio.new_event_loop, uvloop.new_event_loop], ids=["asyncio", "uvloop"])


def run(loop, main):
    with asyncio.Runner(loop_factory=loop) as runner:
        return runner.run(main())


@LOOPS
def test_load_client_reads_every_answer_once_on_few_connections(loop) -> None:
    peers: set[int] = set()
    bodies: list[bytes] = []
    done: dict[int, int] = {}

    def on_done(tag: object, status: int, _t: float) -> None:
        assert tag not in done, "answered twice"
        done[tag] = status  # type: ignore[index]

    paths = ["/204", "/202", "/400", "/chunked", "/close"]

    async def main() -> LoadClient:
        runner, port = await serve(answers_app(peers, bodies))
        try:
            async with LoadClient("127.0.0.1", port, 4, on_done) as client:
                for i in range(500):
                    client.submit(i, request(paths[i % len(paths)], f'{{"seq":{i}}}'.encode()))
                while client.in_flight:
                    await asyncio.sleep(0.01)
                return client
        finally:
            await runner.cleanup()

    client = run(loop, main)
    expected = {"/204": 204, "/202": 202, "/400": 400, "/chunked": 200, "/close": 204}
    assert done == {i: expected[paths[i % len(paths)]] for i in range(500)}
    assert len(peers) <= 4 + 100  # /close drops its connection: at most one new one per close
    assert sorted(bodies) == sorted(f'{{"seq":{i}}}'.encode() for i in range(0, 500, 5))
    assert client.connect_errors == 0


@LOOPS
def test_load_client_fails_requests_it_cannot_complete(loop) -> None:
    """A refused connection, a server that hangs up mid-answer, one that never answers: FAILED."""
    free = socket.socket()
    free.bind(("127.0.0.1", 0))
    refused_port = free.getsockname()[1]
    free.close()  # nothing listens there now
    done: dict[str, int] = {}

    async def hang_up(req: web.Request) -> web.Response:
        await req.read()
        req.transport.abort()  # type: ignore[union-attr]
        return web.Response(status=204)

    release = asyncio.Event()

    async def never(req: web.Request) -> web.Response:
        await req.read()
        await release.wait()  # answers only once the client gave up
        return web.Response(status=204)

    async def main() -> None:
        app = web.Application()
        app.add_routes([web.post("/hang-up", hang_up), web.post("/never", never)])
        runner, port = await serve(app)
        try:
            async with LoadClient("127.0.0.1", refused_port, 2,
                                  lambda tag, s, _t: done.__setitem__(tag, s)) as refused:
                refused.submit("refused", request("/x"))
                while refused.in_flight:
                    await asyncio.sleep(0.01)
            async with LoadClient("127.0.0.1", port, 2, lambda tag, s, _t: done.__setitem__(tag, s),
                                  timeout=0.5) as client:
                client.submit("hang-up", request("/hang-up"))
                client.submit("never", request("/never"))
                while client.in_flight:
                    await asyncio.sleep(0.05)
        finally:
            release.set()
            await runner.cleanup()

    run(loop, main)
    assert done == {"refused": FAILED, "hang-up": FAILED, "never": FAILED}


def test_covered_parts_are_skipped_unread_and_a_merge_of_an_unread_part_is_read(tmp_path) -> None:
    client = clickhouse_connect.get_client(dsn=f"chdb://{tmp_path}/ch")
    try:
        client.command("CREATE TABLE t (k UInt64) ENGINE = MergeTree ORDER BY k "
                       "SETTINGS old_parts_lifetime = 0")
        client.command("SYSTEM STOP MERGES t")
        for lo in (0, 100, 200):
            client.command(f"INSERT INTO t SELECT number + {lo} FROM numbers(100)")
        parts = [r[0] for r in client.query("SELECT DISTINCT _part FROM t ORDER BY 1").result_rows]
        assert len(parts) == 3
        covered = Covered()

        def unread() -> tuple[list[tuple[str, int]], int]:
            out = json.loads(client.raw_query(f"SELECT _part, count(), sum(k) FROM t WHERE {covered.where()} 1 "
                                              "GROUP BY 1 ORDER BY 1", fmt="JSONCompact"))
            return [(r[0], int(r[1])) for r in out["data"]], int(out["statistics"]["rows_read"])

        assert unread()[0] == [(p, 100) for p in parts]
        covered.add(parts[0])
        covered.add(parts[2])
        rows, read = unread()
        assert rows == [(parts[1], 100)] and read == 100  # the covered parts are not read at all
        client.command("SYSTEM START MERGES t")
        client.command("OPTIMIZE TABLE t FINAL")
        rows, read = unread()  # the merge took in the unread part: read once, whole
        assert [n for _, n in rows] == [300] and read == 300
        covered.add(rows[0][0])
        assert unread() == ([], 0)
        assert covered.spans == {"all": [(1, 3)]}
    finally:
        client.close()


def test_covered_rejects_what_is_not_a_part_name() -> None:
    with pytest.raises(ValueError, match="not a part name"):
        Covered().add("x'); DROP TABLE t; --")


def test_per_event_figures_from_the_pipelines_own_counters() -> None:
    """The bench reads the worker's and the sink's /metrics text; per beacon, the rise over the
    phase; per sink flush and per record taken, the sink's timings."""
    from prometheus_client import CollectorRegistry, Counter, generate_latest

    from bench.e2e import SINK_COUNTERS, _counters, per_event

    reg = CollectorRegistry()
    records = Counter("tally_worker_records", "x", ["stage"], registry=reg)
    steps = Counter("tally_worker_step_seconds", "x", ["stage", "step"], registry=reg)
    rows = Counter("tally_sink_rows", "x", ["table"], registry=reg)
    flushes = Counter("tally_sink_flushes", "x", registry=reg)
    flush_s = Counter("tally_sink_flush_seconds", "x", ["step"], registry=reg)
    batch_age = Counter("tally_sink_batch_age_seconds", "x", registry=reg)
    record_age = Counter("tally_sink_record_age_seconds", "x", ["table"], registry=reg)
    taken = Counter("tally_sink_records_taken", "x", ["table"], registry=reg)
    Counter("tally_worker_other", "x", registry=reg).inc(5)
    flushes.inc(3)  # before the phase: left out
    wanted = {"tally_worker_records": ("stage",), "tally_worker_step_seconds": ("stage", "step"), **SINK_COUNTERS}
    before: dict[str, float] = {}
    _counters(generate_latest(reg).decode(), wanted, before)
    records.labels("stage1").inc(100)
    steps.labels("stage1", "enrich").inc(0.05)
    rows.labels("pageviews").inc(1000)
    rows.labels("aggregates").inc(2500)
    flushes.inc(4)
    batch_age.inc(3.2)
    flush_s.labels("insert").inc(0.8)
    flush_s.labels("intent").inc(0.04)
    record_age.labels("pageviews").inc(25.0)
    taken.labels("pageviews").inc(100)
    after: dict[str, float] = {}
    _counters(generate_latest(reg).decode(), wanted, after)
    assert per_event(before, after, 1000) == {"worker_records": {"stage1": 0.1},
                                              "worker_step_us": {"stage1/enrich": 50.0},
                                              "sink_rows": {"pageviews": 1.0, "aggregates": 2.5},
                                              "sink_flush_ms": {"flushes": 4, "batch_age": 800.0,
                                                                "insert": 200.0, "intent": 10.0},
                                              "sink_record_age_ms": {"pageviews": 250.0}}


def _beacons(unique_paths: bool, n: int, rate: float) -> list[tuple[dict, dict]]:
    from bench.e2e import Beacons

    b = Beacons("rtest", unique_paths=unique_paths)
    return [(json.loads(body), headers) for body, headers in (b.request(i, rate) for i in range(n))]


def test_realistic_beacons_are_multi_page_visits_over_a_bounded_set_of_paths() -> None:
    """Default traffic: a bounded, Zipf-like set of paths; a visitor (address + UA) comes back
    for more pages, seconds later; each beacon is found by its `e2e` prop, not its path."""
    from bench.e2e import GAP_S, PATHS, PROP

    rate, n = 1000.0, 60_000
    sent = _beacons(False, n, rate)
    assert [body["props"] for body, _ in sent] == [{PROP: f"rtest-{i}"} for i in range(n)]
    paths = Counter(body["path"].partition("?")[0].partition("#")[0] for body, _ in sent)
    assert len(paths) <= PATHS and paths.most_common(1)[0][0] == "/"
    assert paths["/"] > 5 * paths.most_common(20)[-1][1]  # a few pages take most views
    seen: dict[tuple[str, str], list[int]] = {}
    for i, (_, headers) in enumerate(sent):
        seen.setdefault((headers["X-Forwarded-For"], headers["User-Agent"]), []).append(i)
    visits = list(seen.values())
    assert 1.5 < n / len(visits) < 3.5  # pages per visit (the run's end cuts the last visits short)
    gaps = [b - a for v in visits for a, b in itertools.pairwise(v)]
    assert min(gaps) >= GAP_S[0] * rate - 1 and max(gaps) <= GAP_S[1] * rate * 1.5  # seconds apart
    entries = [sent[v[0]][0] for v in visits]
    inner = [sent[i][0] for v in visits for i in v[1:]]
    assert all(body["referrer"] == "https://example.com/" and "?" not in body["path"] for body in inner)
    assert sum(body["referrer"] not in (None, "https://example.com/") for body in entries) > len(entries) / 3


def test_unique_paths_beacons_are_one_page_visits_each_on_a_path_of_its_own() -> None:
    sent = _beacons(True, 5000, 1000.0)
    assert len({body["path"].partition("?")[0].partition("#")[0] for body, _ in sent}) == 5000
    assert len({(h["X-Forwarded-For"], h["User-Agent"]) for _, h in sent}) > 4990  # fresh visitors (rare repeats)
