"""Query latency over 10 million raw pageviews, in embedded ClickHouse (chDB).

    .venv/bin/python bench/query.py [--events 10000000] [--repeat 7]

Generates the data with ClickHouse itself (INSERT ... SELECT FROM numbers()) in
a temporary chDB directory migrated like the sink's: 30 days, 4 sites (the
measured one holds 70% of the events), 2,000 paths, ~3 M visitors, and the
site_day / path_day aggregates a stream would have emitted (12 stream partitions).
Queries run like an analyst's: a read-only session, the views of docs/analysts.md,
JSONCompact output; the figure is the median of --repeat runs after one warm-up.

- daily_stats_ms: `tally query stats` for 30 days (site_stats_daily, aggregates);
  target <= 100 ms. Baseline in the same run: the same numbers from the raw table.
- top_pages_ms: `tally query top-pages` for 30 days (top_pages view over the
  path_day aggregates); target <= 500 ms. Baseline: top_pages_raw, the same
  report computed from the raw rows (exact uniques over the window).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tally.sinks.migrate import migrate  # noqa: E402
from tally.sinks.reports import Window, stats_sql, top_pages_sql  # noqa: E402
from tally.sinks.warehouse import connect  # noqa: E402

from tally.config import Settings  # noqa: E402

SITE = "site0.test"


def generate(client, events: int, first_day: str) -> None:
    client.command(f"""
INSERT INTO pageviews (event_id, received_at, site, hostname, path, event, visitor_id,
                       referrer_host, referrer_source, browser, os, device)
SELECT generateUUIDv4(number),
       toDateTime64('{first_day} 00:00:00', 3, 'UTC') + toIntervalMillisecond(cityHash64(number, 1) % (30 * 86400000)),
       multiIf(number % 10 < 7, 'site0.test', number % 10 < 8, 'site1.test', number % 10 < 9, 'site2.test', 'site3.test') AS site,
       site,
       concat('/p/', toString(cityHash64(number, 2) % 2000)),
       'pageview',
       toInt64(cityHash64(number % 3000000, 3) % 9223372036854775807),
       ['', 'www.google.com', 'news.ycombinator.com', 't.co'][number % 4 + 1],
       ['direct', 'search', 'social', 'social'][number % 4 + 1],
       ['Chrome', 'Firefox', 'Safari', 'Edge'][cityHash64(number, 4) % 4 + 1],
       ['Windows', 'Mac', 'Linux', 'Android', 'iOS'][cityHash64(number, 5) % 5 + 1],
       ['desktop', 'mobile', 'tablet'][cityHash64(number, 6) % 3 + 1]
FROM numbers({events})
""", settings={"max_insert_threads": 2})
    for kind, dim in (("site_day", "''"), ("path_day", "path")):
        client.command(f"""
INSERT INTO aggregates
SELECT '{kind}', site, {dim}, toStartOfDay(received_at), toStartOfDay(received_at) + INTERVAL 1 DAY,
       toUInt16(abs(visitor_id) % 12), count(), uniqExact(visitor_id), 1
FROM pageviews GROUP BY site, {dim}, toStartOfDay(received_at), abs(visitor_id) % 12
""")


def median_ms(client, sql: str, repeat: int) -> float:
    client.raw_query(sql, fmt="JSONCompact")  # warm-up
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        client.raw_query(sql, fmt="JSONCompact")
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--events", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=7)
    args = ap.parse_args()
    settings = Settings.from_env({"TALLY_STATE_DIR": tempfile.mkdtemp(prefix="tally-bench-query-")})
    last = datetime.now(UTC).date()
    first = last - timedelta(days=29)
    client = connect(settings)
    migrate(client, settings)
    t0 = time.perf_counter()
    generate(client, args.events, first.isoformat())
    rows = client.query("SELECT count() FROM pageviews").result_rows[0][0]
    print(f"generated {rows:,} pageviews and their aggregates in {time.perf_counter() - t0:.1f}s", flush=True)
    client.command("OPTIMIZE TABLE aggregates FINAL")  # a long-running stack has merged its parts too

    ro = connect(settings, readonly=True)
    w = Window(first, last)
    daily = median_ms(ro, stats_sql(SITE, w), args.repeat)
    daily_raw = median_ms(ro, f"SELECT toDate(received_at) AS day, count(), uniqExact(visitor_id) FROM pageviews "
                              f"WHERE site = '{SITE}' AND day BETWEEN '{first}' AND '{last}' GROUP BY day ORDER BY day",
                          args.repeat)
    top = median_ms(ro, top_pages_sql(SITE, w, 10), args.repeat)
    top_raw = median_ms(ro, f"SELECT * FROM top_pages_raw(site = '{SITE}', {w.args()}) LIMIT 10", args.repeat)
    site_rows = ro.query(f"SELECT count() FROM pageviews WHERE site = '{SITE}'").result_rows[0][0]
    print(f"daily stats, 30 days, from aggregates: {daily:.1f} ms (target <= 100); from raw rows: {daily_raw:.1f} ms")
    print(f"top pages, 30 days ({site_rows:,} raw rows of the site): {top:.1f} ms from path_day aggregates "
          f"(target <= 500); {top_raw:.1f} ms from the raw rows (top_pages_raw)")
    print(json.dumps({"bench": "query", "events": rows, "site_rows": site_rows, "days": 30,
                      "daily_stats_ms": round(daily, 1), "daily_stats_from_raw_ms": round(daily_raw, 1),
                      "daily_stats_speedup_vs_raw": round(daily_raw / daily, 1), "top_pages_ms": round(top, 1),
                      "top_pages_raw_ms": round(top_raw, 1), "top_pages_speedup_vs_raw": round(top_raw / top, 1),
                      "target_daily_stats_ms": 100, "target_top_pages_ms": 500}))


if __name__ == "__main__":
    main()
