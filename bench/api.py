"""Stats API latency over 10 million events, against the same SQL sent straight to the engine.

    .venv/bin/python bench/api.py [--events 10000000] [--repeat 100]

Seeds a temporary warehouse directly (no Kafka): `INSERT ... SELECT FROM numbers()`,
30 days, 4 sites (the measured one holds 70% of the events), 2,000 paths, visitor
ids that change every day as the daily salt makes them, referrers, UTM tags,
browsers, systems and devices, plus the site_day / site_hour / path_day aggregates a
stream with 12 partitions would have emitted, and one visit (a `sessions` row) per
visitor and day. Then builds the daily breakdown rollups
with the sink's own builder (sinks/rollups.py: two checks, as a running sink makes
them a check apart: a day is computed once its raw rows held still for one) and
reports how long that took. Then runs what `tally up` runs for
reading: the sink's read service (Unix sockets, SQL guard, analyst pool) in this
process and `tally dashboard` as its own process, with an API key.

For five Plausible-shaped requests (top stats, a 30-day timeseries by day, top pages,
sources, devices with percentage) it measures, interleaved request by request:

- api: `POST /api/v2/query` over HTTP, end to end (key check, request parsing, SQL
  build, socket, guard, query, answer);
- direct: the SQL the API runs for that request (Builder output, the percentage
  denominator included; for a breakdown, the rollups of the usable days plus the raw
  rows of the others), sent straight to a read-only chDB session with the same
  limits, JSONCompact, from this process, on a thread at the analyst pool's priority
  (nice 10).

Figures: p50 and p95 per shape; ratio = direct p50 / api p50 per shape. Targets:
p95 <= 150 ms per shape and ratio >= 0.8. The last line is one JSON object; its
`p95_ms` is the worst shape's api p95 and `ratio` the lowest shape ratio; `load` is the
machine's load average (1, 5, 15 min) at the start and at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tally.api.keys import new_key  # noqa: E402
from tally.api.request import parse_request  # noqa: E402
from tally.api.sql import Builder  # noqa: E402
from tally.sinks import keystore  # noqa: E402
from tally.sinks.analystpool import AnalystPool  # noqa: E402
from tally.sinks.migrate import migrate  # noqa: E402
from tally.sinks.readservice import ReadService  # noqa: E402
from tally.sinks.rollups import Rollups, kept_from  # noqa: E402
from tally.sinks.warehouse import connect  # noqa: E402

from tally.config import Settings  # noqa: E402
from tests.conftest import free_port  # noqa: E402

SITE = "site0.test"
SHAPES = {
    "top_stats": {"metrics": ["visitors", "pageviews"], "date_range": "30d"},
    "timeseries_30d_by_day": {"metrics": ["visitors", "pageviews"], "date_range": "30d", "dimensions": ["time:day"]},
    "top_pages": {"metrics": ["visitors", "pageviews"], "date_range": "30d", "dimensions": ["event:page"],
                  "pagination": {"limit": 10}},
    "sources": {"metrics": ["visitors"], "date_range": "30d", "dimensions": ["visit:source"],
                "pagination": {"limit": 10}},
    "devices": {"metrics": ["visitors", "percentage"], "date_range": "30d", "dimensions": ["visit:device"]},
}


def generate(client, events: int, first_day: str) -> None:
    """Raw pageviews and the aggregates the stream would emit for them."""
    client.command(f"""
INSERT INTO pageviews (event_id, received_at, site, hostname, path, event, visitor_id, referrer_host,
                       referrer_source, utm_source, utm_medium, utm_campaign, browser, os, device)
SELECT generateUUIDv4(number),
       toDateTime64('{first_day} 00:00:00', 3, 'UTC') + toIntervalMillisecond(cityHash64(number, 1) % (30 * 86400000)) AS t,
       multiIf(number % 10 < 7, '{SITE}', number % 10 < 8, 'site1.test', number % 10 < 9, 'site2.test', 'site3.test') AS s,
       s,
       concat('/p/', toString(cityHash64(number, 2) % 2000)),
       if(number % 20 = 0, 'signup', 'pageview'),
       toInt64(bitShiftRight(cityHash64(s, toDate(t), cityHash64(number, 3) % 80000), 1)),
       ['', 'www.google.com', 'news.ycombinator.com', 't.co', 'example.org', s][number % 6 + 1] AS ref,
       ['direct', 'search', 'social', 'social', 'other', 'internal'][number % 6 + 1],
       if(number % 13 = 0, 'newsletter', NULL), if(number % 13 = 0, 'email', NULL), if(number % 13 = 0, 'launch', NULL),
       ['Chrome', 'Firefox', 'Safari', 'Mobile Safari', 'Edge'][cityHash64(number, 4) % 5 + 1],
       ['Windows', 'Mac OS X', 'Linux', 'Android', 'iOS'][cityHash64(number, 5) % 5 + 1],
       ['desktop', 'mobile', 'tablet'][cityHash64(number, 6) % 3 + 1]
FROM numbers({events})
""", settings={"max_insert_threads": 2})
    for kind, bucket, dim, only in (("site_day", "toStartOfDay", "''", "1"), ("site_hour", "toStartOfHour", "''", "1"),
                                    ("path_day", "toStartOfDay", "path", "event = 'pageview'")):
        client.command(f"""
INSERT INTO aggregates
SELECT '{kind}', site, {dim}, {bucket}(received_at), {bucket}(received_at) + INTERVAL 1 {'HOUR' if kind == 'site_hour' else 'DAY'},
       toUInt16(abs(visitor_id) % 12), countIf(event = 'pageview'), uniqExact(visitor_id), 1
FROM pageviews WHERE {only}
GROUP BY site, {dim}, {bucket}(received_at), abs(visitor_id) % 12
""")


def generate_sessions(client) -> None:
    """One visit per visitor and day, from the generated pageviews (the shape the stream's
    `sessions` rows have), so the dashboard's visit cards read a table of realistic size."""
    client.command("""
INSERT INTO sessions
SELECT site, visitor_id, min(received_at), max(received_at), toUInt16(abs(visitor_id) % 12),
       argMin(path, received_at), argMax(path, received_at), countIf(event = 'pageview'), count(),
       toUInt64(dateDiff('millisecond', min(received_at), max(received_at))),
       toUInt8(countIf(event = 'pageview') = 1 AND count() = 1),
       argMin(referrer_source, received_at), argMin(referrer_host, received_at),
       ifNull(argMin(utm_source, received_at), ''), ifNull(argMin(utm_medium, received_at), ''),
       ifNull(argMin(utm_campaign, received_at), ''), '', '', argMin(device, received_at), argMin(browser, received_at),
       argMin(os, received_at), argMin(country, received_at), 1, 0
FROM pageviews
GROUP BY site, visitor_id, toDate(received_at)
""", settings={"max_insert_threads": 2})


def seed(settings: Settings, events: int) -> tuple[Any, str, int, int, float, list]:
    """A migrated warehouse with `events` generated events over the 30 days ending yesterday,
    merged, their daily rollups built, and an API key for SITE: (writer, key, rows, rows of
    SITE, rollup build s, days)."""
    writer = connect(settings)
    migrate(writer, settings)
    last = datetime.now(UTC).date() - timedelta(days=1)  # "30d" ends yesterday
    first = last - timedelta(days=29)
    t0 = time.perf_counter()
    generate(writer, events, first.isoformat())
    generate_sessions(writer)
    writer.command("OPTIMIZE TABLE aggregates FINAL")
    writer.command("OPTIMIZE TABLE sessions FINAL")
    writer.command("OPTIMIZE TABLE pageviews FINAL")  # a long-running stack has merged its parts too
    rows = writer.query("SELECT count() FROM pageviews").result_rows[0][0]
    site_rows = writer.query(f"SELECT count() FROM pageviews WHERE site = '{SITE}'").result_rows[0][0]
    visits = writer.query("SELECT count() FROM sessions").result_rows[0][0]
    print(f"generated {rows:,} events ({site_rows:,} of {SITE}), {visits:,} visits and the aggregates in "
          f"{time.perf_counter() - t0:.1f}s", flush=True)
    t0 = time.perf_counter()
    builder = Rollups(settings, writer)
    computed = builder.check().computed
    computed += builder.check().computed  # the recent days, once they held still for a check
    build_s = time.perf_counter() - t0
    for table in ("daily_stats", "daily_stats_log"):  # merged, as the other tables above
        writer.command(f"OPTIMIZE TABLE {table} FINAL")
    print(f"built the daily rollups of {len(computed)} days (all sites, every dimension) in {build_s:.1f}s",
          flush=True)
    key, record = new_key("bench", (SITE,))
    keystore.insert(writer, record)
    return writer, key, rows, site_rows, build_s, computed


def bench_args(doc: str, repeat: int) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=repeat)
    return ap.parse_args()


def bench_env(state_dir: str) -> dict[str, str]:
    """A stack of its own in `state_dir`, on free ports, with no rate limit in the way."""
    return {"TALLY_STATE_DIR": state_dir, "TALLY_QUERY_PORT": str(free_port()), "TALLY_DASHBOARD_PORT": str(free_port()),
            "TALLY_API_RATE_LIMIT_PER_HOUR": "100000000", "TALLY_API_RATE_LIMIT_BURST": "100000"}


def start_dashboard(env: dict[str, str], settings: Settings) -> subprocess.Popen:
    """`tally dashboard` as its own process (as `tally up` runs it), answering /healthz."""
    child_env = {**{k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}, **env}
    dashboard = subprocess.Popen([sys.executable, "-m", "tally.ops", "dashboard"], cwd=REPO, env=child_env,
                                 stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{settings.dashboard_port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{url}/healthz", timeout=1).read()
            return dashboard
        except OSError:
            if dashboard.poll() is not None or time.monotonic() > deadline:
                dashboard.terminate()
                raise
            time.sleep(0.2)


@dataclass
class Seeded:
    tmp: str
    settings: Settings
    writer: Any
    key: str
    rows: int
    site_rows: int
    build_s: float
    computed: list


@contextmanager
def seeded_stack(prefix: str, events: int, before: Callable[[Any], None] | None = None) -> Iterator[Seeded]:
    """A temporary stack seeded by `seed` (then `before(writer)`), with the sink's read service
    in this process and `tally dashboard` running, as `tally up` runs them; stopped at the end."""
    with tempfile.TemporaryDirectory(prefix=prefix) as tmp:
        env = bench_env(tmp)
        settings = Settings.from_env(env)
        writer, key, rows, site_rows, build_s, computed = seed(settings, events)
        if before is not None:
            before(writer)
        service = ReadService(settings)
        service.start()
        dashboard = None
        try:
            dashboard = start_dashboard(env, settings)
            yield Seeded(tmp, settings, writer, key, rows, site_rows, build_s, computed)
        finally:
            if dashboard is not None:
                dashboard.terminate()
                dashboard.wait(30)
            service.stop()
            writer.close()


def timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000


def p95(values: list[float]) -> float:
    return statistics.quantiles(values, n=20)[-1]


def main() -> None:
    args = bench_args(__doc__, repeat=100)
    load_start = [round(x, 2) for x in os.getloadavg()]
    with seeded_stack("tally-bench-api-", args.events) as st:
        settings, key, rows, site_rows, build_s, computed = (st.settings, st.key, st.rows, st.site_rows, st.build_s,
                                                             st.computed)
        direct = connect(settings, readonly=True)
        # The baseline runs where the sink runs analyst queries: a thread at nice 10.
        low = ThreadPoolExecutor(1, initializer=AnalystPool._init_thread)
        conn = http.client.HTTPConnection("127.0.0.1", settings.dashboard_port, timeout=120)  # keep-alive, as clients do
        today = datetime.now(UTC).date()
        kept = kept_from(settings, today)
        results = {}
        for name, shape in SHAPES.items():
            body = json.dumps({"site_id": SITE, **shape}).encode()
            q = parse_request({"site_id": SITE, **shape}, today)
            sqls = [Builder(q, settings.salt_period, kept).build(q.range)]
            if "percentage" in q.metrics:
                sqls.append(Builder(q, settings.salt_period, kept).build(q.range, totals=True))

            def call_api(body: bytes = body) -> None:
                conn.request("POST", "/api/v2/query", body=body, headers={
                    "Authorization": f"Bearer {key}", "Content-Type": "application/json"})
                resp = conn.getresponse()
                resp.read()
                assert resp.status == 200

            def call_direct(sqls: list = sqls) -> None:
                def run() -> None:
                    for sql in sqls:
                        direct.raw_query(sql.text, fmt="JSONCompact", parameters=sql.params)

                low.submit(run).result()

            for _ in range(10):  # warm-up: caches, the guard's verdict for the shape, kept connections
                call_api()
                call_direct()
            api_ms, direct_ms = [], []
            for _ in range(args.repeat):  # interleaved: both see the same machine
                api_ms.append(timed(call_api))
                direct_ms.append(timed(call_direct))
            r = {"api_p50_ms": round(statistics.median(api_ms), 1), "api_p95_ms": round(p95(api_ms), 1),
                 "direct_p50_ms": round(statistics.median(direct_ms), 1), "direct_p95_ms": round(p95(direct_ms), 1),
                 "source": ("rollups" if "daily_stats" in sqls[0].text else
                            "aggregates" if "aggregates" in sqls[0].text else "raw rows")}
            r["ratio"] = round(r["direct_p50_ms"] / r["api_p50_ms"], 3)
            results[name] = r
            print(f"{name:24s} api p50 {r['api_p50_ms']:7.1f} ms  p95 {r['api_p95_ms']:7.1f} ms | "
                  f"direct p50 {r['direct_p50_ms']:7.1f} ms  p95 {r['direct_p95_ms']:7.1f} ms | "
                  f"ratio {r['ratio']:.3f} ({r['source']})", flush=True)
        direct.close()
        conn.close()
        low.shutdown()
    worst = max(results.values(), key=lambda r: r["api_p95_ms"])
    print(json.dumps({"bench": "api", "events": rows, "site_rows": site_rows, "days": 30, "repeat": args.repeat,
                      "rollup_build_s": round(build_s, 1), "rollup_days": len(computed),
                      "load": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]},
                      "shapes": results, "p95_ms": worst["api_p95_ms"],
                      "ratio": min(r["ratio"] for r in results.values()),
                      "target_p95_ms": 150, "target_ratio": 0.8}))


if __name__ == "__main__":
    main()
