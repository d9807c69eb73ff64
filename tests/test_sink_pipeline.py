"""The sink end to end on the real broker and real chDB: every topic in, exact rows and
views out, TTLs in the DDL, poison records to bad rows, a clean (then a drifting)
reconcile, read-only analyst access, and a retention change applied by re-migrating."""

from __future__ import annotations

import json
import subprocess
import sys
import uuid
from datetime import timedelta

import pytest
from tally.ops.stack import http_ok
from tally.sinks.query import SinkSocket

from tests.conftest import REPO, wait_for
from tests.helpers import query_rows
from tests.sink_records import Records, pageview, recent_days

pytestmark = pytest.mark.integration


def tally(env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tally.ops", *args], cwd=REPO, env=env.child_env(),
                          capture_output=True, text=True, timeout=120)


def endpoint(s, sql: str) -> tuple[int, str]:
    """The sink's read service, over its Unix socket."""
    status, body = SinkSocket(s.socket_path).request("POST", "/v1/sql", {"sql": sql, "format": "JSONCompact"})
    return status, body.decode()


WRITES = [
    "INSERT INTO pageviews (event_id, received_at, site, path, visitor_id) VALUES (generateUUIDv4(), now(), 'x', '/', 1)",
    "DROP TABLE pageviews",
    "ALTER TABLE pageviews DELETE WHERE 1",
    "TRUNCATE TABLE aggregates",
    "SELECT count() FROM pageviews SETTINGS readonly = 0",
    "INSERT INTO drops (site, day, reason, component, count) SELECT 'x', today(), 'bot', 'sink', 1 SETTINGS readonly = 0",
    "CREATE TABLE evil (x UInt8) ENGINE = Memory",
]


def test_sink_stores_every_topic_exactly(tally_env, spawn):
    s = tally_env.settings
    days = recent_days(3)
    rec = Records(s, partitions=4)
    rec.pageviews(600, days)
    rec.aggregates_from_sent(version=1, skew=5)   # stale totals...
    rec.aggregates_from_sent(version=2)           # ...replaced by the re-emitted ones
    now = rec.adoption_events(7, workspaces=3, apart=timedelta(hours=1))
    rec.drop("a.test", days[0], "bot", 3)
    replayed = rec.drop("a.test", days[0], "bot", 4)
    rec.drop("b.test", days[1], "datacenter", 2)
    # A worker that crashed re-runs the same input record and emits the same count again:
    # the warehouse keeps one row per source, so it is not counted twice.
    rec.produce("drops", replayed, key=b"a.test")
    rec.bad_row("too_late")
    rec.produce("pageviews.enriched", b"\xc3\x01garbage-not-avro", partition=0)   # poison
    # Poison that frames but that ClickHouse refuses (cut inside its last item): the whole
    # Avro insert fails, the sink falls back to record-by-record and rejects only this one.
    truncated = rec.codec.encode("pageview_batch", {"source_partition": 0, "source_offset": 0, "items": [
        pageview(str(uuid.uuid4()), 1_700_000_000_000, "a.test", "/cut", 1)]})[:-1]
    rec.produce("pageviews.enriched", truncated, partition=1)
    rec.produce("product.events", b"not avro at all")                            # poison
    rec.product_event("report.created", "report", "t1", "w1", now, {"email": "a@b.c"})  # not in the catalog
    rec.flush()

    sink = spawn(tally_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    expected_rows = len(rec.sent.event_ids)
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] == expected_rows, 60, "pageviews")
    try:
        wait_for(lambda: query_rows(s, "SELECT count() FROM bad_rows")[0][0] == 5, 60, "bad rows")
    except AssertionError:
        print(query_rows(s, "SELECT * FROM bad_rows"), sink.output()[-5000:])
        raise

    assert query_rows(s, "SELECT count(), uniqExact(event_id) FROM pageviews")[0] == [expected_rows, expected_rows]
    # Daily site stats from the aggregates: highest version, summed over partitions, equal to what was sent.
    got = {(r[0], r[1]): (int(r[2]), int(r[3]))
           for r in query_rows(s, "SELECT site, day, pageviews, visitors FROM site_stats_daily")}
    assert got == rec.sent.site_days()
    assert int(query_rows(s, "SELECT sum(dropped) FROM drops_daily")[0][0]) == 9
    assert query_rows(s, "SELECT reason, component FROM bad_rows ORDER BY reason, component") == [
        ["invalid_event", "sink"], ["too_late", "worker"], ["undecodable", "sink"], ["undecodable", "sink"], ["undecodable", "sink"]]
    assert query_rows(s, "SELECT count() FROM product_events")[0][0] == 8
    meta = query_rows(s, "SELECT metadata FROM product_events WHERE feature_area = 'onboarding'")[0][0]
    assert meta == {"checkpoint": "connection_verified", "resumed": "true", "step_index": "2"}

    # Retention is in the DDL of every raw table, not on the aggregates.
    ddl = {t: query_rows(s, f"SHOW CREATE TABLE {t}")[0][0] for t in
           ("pageviews", "product_events", "bad_rows", "aggregates", "drops")}
    assert "TTL toDateTime(received_at) + toIntervalDay(540)" in ddl["pageviews"]
    assert "TTL toDateTime(occurred_at) + toIntervalDay(90)" in ddl["product_events"]
    assert "TTL toDateTime(failed_at) + toIntervalDay(7)" in ddl["bad_rows"]
    assert "TTL" not in ddl["aggregates"] and "TTL" not in ddl["drops"]
    assert "ReplacingMergeTree(version)" in ddl["aggregates"] and "ReplacingMergeTree" in ddl["drops"]

    _reports_reconcile_read_only_and_retention(tally_env, sink, rec, days, now, expected_rows)


def _reports_reconcile_read_only_and_retention(tally_env, sink, rec, days, now, expected_rows):
    """The second half of test_sink_stores_every_topic_exactly, on the data it stored."""
    s = tally_env.settings
    # Named reports through the running sink's endpoint.
    lo, hi = str(days[-1]), str(days[0])
    out = tally(tally_env, "query", "stats", "--site", "a.test", "--from", lo, "--to", hi, "--format", "json")
    assert out.returncode == 0, out.stderr
    stats = {r["day"]: int(r["pageviews"]) for r in json.loads(out.stdout)["data"]}
    assert stats == {d: c for (site, d), (c, _) in rec.sent.site_days().items() if site == "a.test"}
    out = tally(tally_env, "query", "top-pages", "--site", "a.test", "--from", lo, "--to", hi, "--format", "csv")
    assert out.returncode == 0 and out.stdout.splitlines()[0] == '"path","pageviews"', out
    assert sum(int(line.split(",")[1]) for line in out.stdout.splitlines()[1:]) == 300
    # top_pages (aggregates) and top_pages_raw (raw rows) agree on every path.
    args = f"site = 'a.test', date_from = '{lo}', date_to = '{hi}'"
    assert query_rows(s, f"SELECT path, pageviews FROM top_pages({args})") == \
        query_rows(s, f"SELECT path, pageviews FROM top_pages_raw({args})")
    out = tally(tally_env, "query", "adoption", "--from", str(now.date() - timedelta(days=1)),
                "--to", str(now.date()), "--format", "json")
    adoption = {r["family"]: (int(r["events"]), int(r["active_workspaces"])) for r in json.loads(out.stdout)["data"]}
    assert adoption == {"onboarding": (1, 1), "support": (0, 0), "operation": (0, 0), "report": (7, 3),
                        "review_pack": (0, 0), "all": (8, 4)}
    for report in ("sources", "browsers", "os", "devices"):
        out = tally(tally_env, "query", report, "--site", "b.test", "--from", lo, "--to", hi, "--format", "json")
        assert out.returncode == 0, (report, out.stderr)
        assert sum(int(r["pageviews"]) for r in json.loads(out.stdout)["data"]) == 300, report
    out = tally(tally_env, "query", "SELECT count() FROM pageviews", "--format", "csv")
    assert out.stdout.splitlines() == ['"count()"', str(expected_rows)]

    # Clean reconcile, then drift after an aggregate re-emission that disagrees with the raw rows.
    out = tally(tally_env, "reconcile", "--from", lo, "--to", hi, "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["days"] == 6 and json.loads(out.stdout)["drift"] == []
    rec.aggregates_from_sent(version=3, skew=2)
    rec.flush()
    wait_for(lambda: tally(tally_env, "reconcile", "--from", lo, "--to", hi).returncode == 1, 30, "drift")
    out = tally(tally_env, "reconcile", "--from", lo, "--to", hi, "--json")
    drift = json.loads(out.stdout)["drift"]
    assert len(drift) == 1 and drift[0]["agg_pageviews"] - drift[0]["raw_pageviews"] == 2

    # Read-only: writes through the socket and through `tally query` are refused by the guard
    # before they reach the engine (which runs analyst sessions with readonly = 1 as well).
    for sql in WRITES:
        status, body = endpoint(s, sql)
        assert status == 400 and json.loads(body)["refused"], (sql, status, body)
        out = tally(tally_env, "query", sql)
        assert out.returncode == 1 and "refused" in out.stderr.lower(), (sql, out.stderr)
    # A bare SET cannot lift it either (refused).
    assert endpoint(s, "SET readonly = 0")[0] == 400
    assert tally(tally_env, "query", "SET readonly = 0").returncode == 1
    assert query_rows(s, "SELECT count() FROM pageviews")[0][0] == expected_rows
    assert sink.alive(), sink.output()[-3000:]
    assert "decoding record by record" in sink.output()

    # Stack down: `tally query` opens chDB itself, still read-only.
    sink.stop()
    out = tally(tally_env, "query", "DROP TABLE pageviews")
    assert out.returncode == 1 and "refused" in out.stderr.lower(), out.stderr
    assert query_rows(s, "SELECT count() FROM pageviews")[0][0] == expected_rows

    # A retention change reaches the table on the next migrate (ALTER ... MODIFY TTL).
    tally_env.vars["TALLY_RAW_RETENTION_DAYS"] = "7"
    tally_env.vars["TALLY_PRODUCT_RETENTION_DAYS"] = "45"
    out = tally(tally_env, "migrate")
    assert out.returncode == 0 and "R_retention" in out.stdout, out.stdout + out.stderr
    ddl = query_rows(tally_env.settings, "SHOW CREATE TABLE pageviews")[0][0]
    assert "toIntervalDay(7)" in ddl and "toIntervalDay(540)" not in ddl
    assert "toIntervalDay(45)" in query_rows(tally_env.settings, "SHOW CREATE TABLE product_events")[0][0]
    out = tally(tally_env, "migrate")
    assert out.stdout.strip() == "nothing to apply"
