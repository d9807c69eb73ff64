"""The Stats API on the real stack: beacons through the collector, the stream worker and
the sink into chDB, then `tally dashboard` answering Plausible-shaped requests.

Expected numbers are computed here from the traffic the test sent, in Plausible's
vocabulary, and checked against the API, the raw rows, `tally query` and
`tally reconcile`. Keys: 401 without one, 403 for another site's, 400 naming the bad
field, revocation; keys are stored hashed and analysts' SQL cannot read them."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections import defaultdict
from datetime import UTC, datetime, timedelta

import pytest
from tally.ops.stack import http_ok

from tally.config import Settings
from tests.conftest import REPO, Env, start_pipeline, wait_for
from tests.helpers import collect_url, post_json, query_rows
from tests.sink_records import Records

pytestmark = pytest.mark.integration

UAS = [  # (user agent, Plausible's browser, os, device)
    ("Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0", "Firefox", "GNU/Linux", "Desktop"),
    ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
     "Chrome", "Windows", "Desktop"),
    ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 "
     "Mobile/15E148 Safari/604.1", "Safari", "iOS", "Mobile"),
    ("Mozilla/5.0 (Linux; Android 14; SM-X710) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
     "Chrome", "Android", "Tablet"),
    ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
     "Safari", "Mac", "Desktop"),
]
REFERRERS = [  # (referrer, Plausible's source, referrer)
    ("https://www.google.com/search?q=tally", "Google", "google.com"),
    ("https://news.ycombinator.com/item?id=1", "Hacker News", "news.ycombinator.com"),
    (None, "Direct / None", "Direct / None"),
    ("https://example.com/", "Direct / None", "Direct / None"),  # internal: not a source
    ("https://someblog.org/post", "someblog.org", "someblog.org"),
]
UTM = "/pricing?utm_source=newsletter&utm_medium=email&utm_campaign=launch"


def traffic() -> list[dict]:
    """The beacons of 10 visitors (distinct IPs and user agents) on example.com, with what
    each one means in Plausible's words."""
    out = []
    for v in range(10):
        ua, browser, os_name, device = UAS[v % 5]
        ref, source, referrer = REFERRERS[v % 5]
        base = {"visitor": v, "ua": ua, "browser": browser, "os": os_name, "device": device}
        out.append({**base, "path": "/", "ref": ref, "source": source, "referrer": referrer, "event": "pageview"})
        out.append({**base, "path": f"/docs/{v % 3}", "ref": "https://example.com/", "source": "Direct / None",
                    "referrer": "Direct / None", "event": "pageview"})
        if v % 4 == 0:
            out.append({**base, "path": UTM, "ref": None, "source": "newsletter", "referrer": "Direct / None",
                        "event": "pageview", "utm": ("newsletter", "email", "launch")})
        if v % 3 == 0:
            out.append({**base, "path": "/pricing", "ref": None, "source": "Direct / None", "referrer": "Direct / None",
                        "event": "signup"})
    return out


def send(s, beacons: list[dict]) -> list[dict]:
    """Post the beacons to the collector, each from its visitor's address and browser."""
    for b in beacons:
        body = {"site": "example.com", "path": b["path"], "referrer": b["ref"]}
        if b["event"] != "pageview":
            body.update(event=b["event"], props={"plan": "pro"})
        status, resp, _ = post_json(collect_url(s), body, headers={
            "User-Agent": b["ua"], "X-Forwarded-For": f"203.0.113.{10 + b['visitor']}"})
        assert status in (202, 204), resp
    return beacons


def expected(beacons: list[dict], key) -> dict[str, list[int]]:
    """Dimension value -> [visitors, pageviews, events], as the API must count them."""
    acc: dict[str, list] = defaultdict(lambda: [set(), 0, 0])
    for b in beacons:
        entry = acc[key(b)]
        entry[0].add(b["visitor"])
        entry[1] += b["event"] == "pageview"
        entry[2] += 1
    return {k: [len(v), p, e] for k, (v, p, e) in acc.items()}


def page(b: dict) -> str:
    return b["path"].split("?")[0]


def api(s, key: str | None, body, route: str = "/api/v2/query", headers: dict | None = None,
        raw: bytes | None = None) -> tuple[int, dict]:
    hdrs = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {}), **(headers or {})}
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(f"http://127.0.0.1:{s.dashboard_port}{route}", data=data, headers=hdrs,
                                 method="POST" if data is not None else "GET")
    try:
        with urllib.request.urlopen(req, timeout=120) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def tally(env: Env, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tally.ops", *args], cwd=REPO, env=env.child_env(),
                          capture_output=True, text=True, timeout=120)


def reconciled(env: Env, *args: str, within: float = 60) -> dict:
    """`tally reconcile --json` once it finds no drift, or its last report after `within`
    seconds. The session aggregates go out every TALLY_SESSION_FLUSH_SECONDS (10 s), after
    the other totals, so a check right after those caught up can still meet them behind."""
    deadline = time.monotonic() + within
    while True:
        out = tally(env, "reconcile", *args, "--json")
        assert out.returncode in (0, 1), out.stdout + out.stderr
        report = json.loads(out.stdout)
        if (out.returncode == 0 and report["drift"] == [] and not report.get("rollup_drift")) \
                or time.monotonic() > deadline:
            return report
        time.sleep(1)


def new_key(env: Env, *scope: str) -> str:
    out = tally(env, "api-key", "create", *scope, "--name", "test")
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def by_dimension(results: list[dict]) -> dict[str, list]:
    return {r["dimensions"][0]: r["metrics"] for r in results}


def test_stats_api_answers_like_plausible_and_equals_the_raw_rows(tally_env, spawn):
    tally_env.vars.update({"TALLY_TRUSTED_PROXIES": "127.0.0.1/32", "TALLY_API_RATE_LIMIT_BURST": "1000"})
    s = tally_env.settings
    start_pipeline(tally_env, spawn)
    dashboard = spawn(tally_env, "dashboard")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.dashboard_port}/healthz"), 30, "dashboard")

    beacons = send(s, traffic())
    for i in range(3):
        post_json(collect_url(s), {"site": "localhost", "path": f"/other/{i}"},
                  headers={"User-Agent": UAS[0][0], "X-Forwarded-For": "203.0.113.99"})
    today = datetime.now(UTC).date().isoformat()
    total = len(beacons)
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL WHERE site = 'example.com'")[0][0] == total,
             120, "every beacon stored")
    pageviews = sum(b["event"] == "pageview" for b in beacons)
    wait_for(lambda: query_rows(s, f"SELECT toUInt32(pageviews), toUInt32(visitors) FROM site_stats_daily "
                                   f"WHERE site = 'example.com' AND day = '{today}'") == [[pageviews, 10]],
             120, "site_day aggregates")

    key = new_key(tally_env, "--site", "example.com")
    other = new_key(tally_env, "--site", "localhost")

    # --- top stats: aggregates and raw rows, both equal to what was sent and to reconcile
    status, top = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "pageviews"], "date_range": "day"})
    assert status == 200 and top["results"] == [{"dimensions": [], "metrics": [10, pageviews]}], top
    assert top["query"]["date_range"] == [f"{today}T00:00:00Z", f"{today}T23:59:59Z"]
    raw = query_rows(s, f"SELECT uniqExact(visitor_id), countIf(event = 'pageview'), count() FROM pageviews FINAL "
                        f"WHERE site = 'example.com' AND toDate(received_at) = '{today}'")[0]
    status, top_raw = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "pageviews", "events"],
                                   "date_range": "day", "filters": [["is_not", "event:page", ["/nowhere"]]]})
    assert top_raw["results"][0]["metrics"] == [int(v) for v in raw] == [10, pageviews, total]
    rec = reconciled(tally_env, "--from", today, "--to", today)
    assert rec["drift"] == [], rec
    stats = json.loads(tally(tally_env, "query", "stats", "--site", "example.com", "--from", today, "--to", today,
                             "--format", "json").stdout)["data"]
    assert [int(stats[0]["pageviews"]), int(stats[0]["visitors"])] == [pageviews, 10]

    # --- timeseries: days from the aggregates, hours from site_hour, both as the raw rows say
    status, ts = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "pageviews"], "date_range": "7d",
                              "dimensions": ["time:day"], "include": {"time_labels": True}})
    week = [(datetime.now(UTC).date() - timedelta(days=d)).isoformat() for d in range(7, 0, -1)]
    assert status == 200 and ts["meta"]["time_labels"] == week and ts["results"] == []  # 7d ends yesterday
    status, ts = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "pageviews"], "date_range": "day",
                              "dimensions": ["time:hour"]})
    hours = query_rows(s, "SELECT formatDateTime(toStartOfHour(received_at), '%Y-%m-%d %H:00:00'), "
                          "uniqExact(visitor_id), countIf(event = 'pageview') FROM pageviews FINAL "
                          "WHERE site = 'example.com' GROUP BY 1 ORDER BY 1")
    assert [[r["dimensions"][0], *r["metrics"]] for r in ts["results"]] == [[h, int(v), int(p)] for h, v, p in hours]

    check_breakdowns(tally_env, key, beacons, today)
    check_filters_comparisons_realtime(s, key, beacons, today, pageviews)
    check_keys_and_errors(tally_env, key, other)
    assert dashboard.alive(), dashboard.output()[-2000:]


def check_breakdowns(tally_env: Env, key: str, beacons: list[dict], today: str) -> None:
    s = tally_env.settings
    # --- breakdowns in Plausible's vocabulary, equal to the traffic sent
    for dimension, key_of in [("visit:device", lambda b: b["device"]), ("visit:browser", lambda b: b["browser"]),
                              ("visit:os", lambda b: b["os"]), ("visit:source", lambda b: b["source"]),
                              ("visit:referrer", lambda b: b["referrer"]), ("event:page", page),
                              ("event:name", lambda b: b["event"]), ("event:hostname", lambda b: "example.com"),
                              ("visit:utm_source", lambda b: b.get("utm", ("(not set)",) * 3)[0]),
                              ("visit:utm_medium", lambda b: b.get("utm", ("(not set)",) * 3)[1]),
                              ("visit:utm_campaign", lambda b: b.get("utm", ("(not set)",) * 3)[2])]:
        status, got = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "pageviews", "events"],
                                   "date_range": "day", "dimensions": [dimension]})
        assert status == 200, got
        assert by_dimension(got["results"]) == expected(beacons, key_of), dimension
        visitors = [r["metrics"][0] for r in got["results"]]
        assert visitors == sorted(visitors, reverse=True)  # Plausible's default order
    # The same numbers as `tally query devices` and the raw rows.
    devices = json.loads(tally(tally_env, "query", "devices", "--site", "example.com", "--from", today, "--to", today,
                               "--format", "json").stdout)["data"]
    assert {d["device"].capitalize(): int(d["visitors"]) for d in devices} == {
        k: v[0] for k, v in expected(beacons, lambda b: b["device"]).items()}
    # Top pages by pageviews come from the path_day aggregates and equal `tally query top-pages`.
    status, pages = api(s, key, {"site_id": "example.com", "metrics": ["pageviews"], "date_range": "day",
                                 "dimensions": ["event:page"]})
    top_pages = json.loads(tally(tally_env, "query", "top-pages", "--site", "example.com", "--from", today, "--to",
                                 today, "--format", "json").stdout)["data"]
    assert by_dimension(pages["results"]) == {p["path"]: [int(p["pageviews"])] for p in top_pages}

    # --- percentage, ordering, pagination, total rows
    status, got = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "percentage"], "date_range": "day",
                               "dimensions": ["visit:device"], "order_by": [["visitors", "asc"]],
                               "pagination": {"limit": 2, "offset": 1}, "include": {"total_rows": True}})
    devices = sorted(expected(beacons, lambda b: b["device"]).items(), key=lambda kv: (kv[1][0], kv[0]))
    assert got["meta"]["total_rows"] == len(devices)
    assert [(r["dimensions"][0], r["metrics"]) for r in got["results"]] == [
        (name, [m[0], round(m[0] / 10 * 100, 1)]) for name, m in devices[1:3]]


def check_filters_comparisons_realtime(s: Settings, key: str, beacons: list[dict], today: str, pageviews: int) -> None:
    # --- filters: is, is_not, contains, matches, and / or / not, case-insensitive
    def count(filters) -> int:
        status, got = api(s, key, {"site_id": "example.com", "metrics": ["events"], "date_range": "day",
                                   "filters": filters})
        assert status == 200, got
        return got["results"][0]["metrics"][0]

    assert count([["is", "visit:browser", ["Chrome"]]]) == sum(b["browser"] == "Chrome" for b in beacons)
    assert count([["is_not", "visit:device", ["Desktop"]]]) == sum(b["device"] != "Desktop" for b in beacons)
    assert count([["contains", "event:page", ["docs"]]]) == sum("docs" in b["path"] for b in beacons)
    assert count([["matches", "event:page", ["^/docs/[01]$"]]]) == sum(page(b) in ("/docs/0", "/docs/1") for b in beacons)
    assert count([["is", "visit:os", ["ios"], {"case_sensitive": False}]]) == sum(b["os"] == "iOS" for b in beacons)
    assert count([["or", [["is", "visit:source", ["Google"]], ["is", "event:name", ["signup"]]]]]) == sum(
        b["source"] == "Google" or b["event"] == "signup" for b in beacons)
    assert count([["and", [["is", "visit:device", ["Desktop"]], ["not", ["is", "event:page", ["/"]]]]]]) == sum(
        b["device"] == "Desktop" and page(b) != "/" for b in beacons)

    # --- comparisons: yesterday had no traffic
    status, got = api(s, key, {"site_id": "example.com", "metrics": ["visitors"], "date_range": "day",
                               "dimensions": ["visit:device"], "include": {"comparisons": {"mode": "previous_period"}}})
    yesterday = (datetime.now(UTC).date() - timedelta(days=1)).isoformat()
    assert status == 200 and all(r["comparison"]["metrics"] == [0] and r["comparison"]["change"] == [100]
                                 for r in got["results"]), got
    status, got = api(s, key, {"site_id": "example.com", "metrics": ["pageviews"], "date_range": "day",
                               "dimensions": ["time:day"], "include": {"comparisons": {"mode": "previous_period"}}})
    assert got["results"] == [{"dimensions": [today], "metrics": [pageviews],
                               "comparison": {"dimensions": [yesterday], "metrics": [0], "change": [100]}}]

    # --- realtime: everyone of the last 5 minutes
    status, now_visitors = api(s, key, None, "/api/v1/stats/realtime/visitors?site_id=example.com")
    assert status == 200 and now_visitors == 10


def check_keys_and_errors(tally_env: Env, key: str, other: str) -> None:
    s = tally_env.settings
    # --- keys and errors
    ask = {"site_id": "example.com", "metrics": ["visitors"], "date_range": "day"}
    assert api(s, None, ask)[0] == 401
    assert api(s, "tly_000000000000_" + "x" * 43, ask)[0] == 401
    status, err = api(s, other, ask)
    assert status == 403 and "example.com" in err["error"]
    assert api(s, other, {**ask, "site_id": "localhost"})[0] == 200
    for bad, field in [({**ask, "metrics": ["visitors", "exit_rate"]}, "#/metrics/1"),
                       ({**ask, "dimensions": ["visit:city"]}, "#/dimensions/0"),
                       ({**ask, "metrics": ["visitors", "bounce_rate"], "dimensions": ["event:page"]},
                        "#/metrics/1: Metric `bounce_rate` cannot be queried with the dimension `event:page`"),
                       ({**ask, "date_range": "yesterday"}, "#/date_range"),
                       ({**ask, "filters": [["is", "visit:browser"]]}, "#/filters/0"),
                       ({**ask, "order_by": [["pageviews", "desc"]]}, "#/order_by/0"),
                       ({k: v for k, v in ask.items() if k != "site_id"}, "site ID")]:
        status, err = api(s, key, bad)
        assert status == 400 and field in err["error"], (bad, status, err)
    assert api(s, key, None, raw=b"{not json")[0] == 400
    assert api(s, key, ask, headers={"Content-Type": "text/plain"})[0] == 415
    assert api(s, key, ask, headers={"Host": "attacker.example"})[0] == 403  # DNS rebinding
    # A user's bad regex is a 400 with the engine's message, and the API keeps answering.
    status, err = api(s, key, {**ask, "filters": [["matches", "event:page", ["(("]]]})
    assert status == 400 and "re2" in err["error"]
    assert api(s, key, ask)[1]["results"][0]["metrics"] == [10]

    # Analysts' SQL cannot read the keys; revoking one closes it.
    out = tally(tally_env, "query", "SELECT key_hash FROM api_keys")
    assert out.returncode == 1 and "api_keys" in out.stderr
    listed = json.loads(tally(tally_env, "api-key", "list", "--json").stdout)
    assert {k["key_id"] for k in listed} == {key.split("_")[1], other.split("_")[1]}
    assert key not in json.dumps(listed) and "key_hash" not in json.dumps(listed)
    assert tally(tally_env, "api-key", "revoke", other.split("_")[1]).returncode == 0
    wait_for(lambda: api(s, other, {**ask, "site_id": "localhost"})[0] == 401, 30, "revoked key refused")


def test_adoption_and_keys_at_rest(tally_env, spawn):
    s = tally_env.settings
    sink, _, _ = start_pipeline(tally_env, spawn)
    spawn(tally_env, "dashboard")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.dashboard_port}/healthz"), 30, "dashboard")
    rec = Records(s, partitions=s.topic_partitions)
    now = rec.adoption_events(5, workspaces=2, apart=timedelta(minutes=1))
    rec.flush()
    wait_for(lambda: query_rows(s, "SELECT count() FROM product_events")[0][0] == 6, 90, "product events")

    t1 = new_key(tally_env, "--tenant", "t1")
    every = new_key(tally_env, "--tenant", "*", "--site", "example.com")
    day = now.date().isoformat()
    status, got = api(s, t1, None, f"/api/tally/v1/adoption?from={day}&to={day}&tenant=t1")
    assert status == 200 and not got["empty"], got
    families = {f["family"]: f for f in got["families"]}
    assert [f["family"] for f in got["families"]] == ["onboarding", "support", "operation", "report", "review_pack"]
    assert families["report"]["label"] == "Stored reports"
    assert (families["report"]["events"], families["report"]["active_workspaces"]) == (5, 2)
    assert families["onboarding"]["events"] == 0 and families["onboarding"]["last_event_at"] is None
    assert got["last_event_at"] and got["last_event_at"].startswith(day)
    cli = json.loads(tally(tally_env, "query", "adoption", "--tenant", "t1", "--from", day, "--to", day,
                           "--format", "json").stdout)["data"]
    assert {r["family"]: int(r["events"]) for r in cli} == {
        **{f["family"]: f["events"] for f in got["families"]}, "all": got["events"]}
    # The explicit zero state, the all-tenants view, and the tenant scope of keys.
    status, empty = api(s, t1, None, "/api/tally/v1/adoption?from=2020-01-01&to=2020-01-31&tenant=t1")
    assert status == 200 and empty["empty"] and all(f["events"] == 0 for f in empty["families"])
    assert len(empty["families"]) == 5 and empty["last_event_at"] is None
    status, everyone = api(s, every, None, f"/api/tally/v1/adoption?from={day}&to={day}")
    assert status == 200 and everyone["events"] == 6 and everyone["active_workspaces"] == 3
    assert api(s, t1, None, "/api/tally/v1/adoption?tenant=t2")[0] == 403
    assert api(s, t1, None, "/api/tally/v1/adoption")[0] == 403
    status, err = api(s, t1, None, "/api/tally/v1/adoption?tenant=t1&from=yesterday")
    assert status == 400 and err["error"].startswith("from:")

    # At rest: the warehouse holds the keys' SHA-256 only.
    sink.stop()
    assert not s.socket_path.exists() and not s.sql_socket_path.exists()  # sockets removed, warehouse released
    from tally.sinks import keystore
    from tally.sinks.warehouse import connect

    client = connect(s)
    try:
        stored = {r.key_id: r for r in keystore.all_keys(client)}
        for key in (t1, every):
            record = stored[key.split("_")[1]]
            assert record.key_hash == hashlib.sha256(key.encode()).hexdigest()
            found = client.query("SELECT count() FROM api_keys WHERE position(key_hash, {k:String}) > 0 "
                                 "OR position(name, {k:String}) > 0", parameters={"k": key}).result_rows[0][0]
            assert found == 0
    finally:
        client.close()


def rollup_events(day, n: int, seed: int = 0) -> list[dict]:
    """n pageviews of example.com on `day`, spread over pages, visitors, devices and sources."""
    from tests.sink_records import day_ms, pageview

    out = []
    for i in range(seed, seed + n):
        item = pageview(str(uuid.uuid4()), day_ms(day) + (i * 7919) % 86_400_000, "example.com", f"/p/{i % 4}",
                        day.toordinal() * 100 + i % 11, "search" if i % 3 == 0 else "direct")
        item["device"] = ("desktop", "mobile", "tablet")[i % 3]
        out.append(item)
    return out


def stored_counts(items: list[dict], key_of) -> dict[str, list[int]]:
    """[visitors, pageviews] per key, a replayed event counted once."""
    acc: dict[str, list] = defaultdict(lambda: [set(), 0])
    for item in {i["event_id"]: i for i in items}.values():
        acc[key_of(item)][0].add(item["visitor_id"])
        acc[key_of(item)][1] += 1
    return {k: [len(v), n] for k, (v, n) in acc.items()}


def test_breakdowns_mix_daily_rollups_and_raw_rows_on_the_stack(tally_env, spawn):
    """The sink rolls up the days that are over; the API answers a range of rolled-up days
    and today's (raw rows) exactly as the raw rows do, also right after a late event and a
    replayed one arrive for a rolled-up day (that day is read from the raw rows until the
    sink has recomputed it)."""
    # No worker here: the test writes the pageviews and aggregates itself, and no sessions.
    tally_env.vars.update({"TALLY_ROLLUP_CHECK_SECONDS": "0.5", "TALLY_API_RATE_LIMIT_BURST": "1000",
                           "TALLY_SESSION_TIMEOUT_SECONDS": "0"})
    s = tally_env.settings
    spawn(tally_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    spawn(tally_env, "dashboard")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.dashboard_port}/healthz"), 30, "dashboard")
    today = datetime.now(UTC).date()
    past = [today - timedelta(days=6), today - timedelta(days=4), today - timedelta(days=1)]
    rec = Records(s, partitions=s.topic_partitions)
    sent: list[dict] = []

    def send(items: list[dict]) -> None:
        by_partition: dict[int, list[dict]] = defaultdict(list)
        for item in items:
            p = item["visitor_id"] % s.topic_partitions
            by_partition[p].append(item)
            if item["event_id"] not in rec.sent.event_ids:  # the aggregates count a replayed event once
                rec.sent.add(item["site"], datetime.fromtimestamp(item["received_at"] / 1000, UTC).date(), item["path"],
                         p, item["visitor_id"], item["event_id"])
        for p, batch in by_partition.items():
            rec._offset += 1
            rec.produce("pageviews.enriched", rec.codec.encode(
                "pageview_batch", {"source_partition": p, "source_offset": rec._offset, "items": batch}), partition=p)

    for n, day in enumerate([*past, today]):
        batch = rollup_events(day, 30 + 5 * n)
        send(batch)
        sent += batch
    rec.aggregates_from_sent()
    rec.flush()
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL")[0][0] == len(sent), 90, "pageviews stored")

    def logged() -> dict[str, int]:
        return {d: int(v) for d, v in query_rows(s, "SELECT toString(day), version FROM daily_stats_log FINAL "
                                                    "WHERE site = 'example.com'")}

    wait_for(lambda: set(logged()) == {str(d) for d in past}, 90, "the rollups of the past days")
    versions = logged()

    key = new_key(tally_env, "--site", "example.com")
    window = [str(past[0]), str(today)]

    def answers() -> dict[str, dict[str, list[int]]]:
        out = {}
        for dimension in ("event:page", "visit:device", "visit:source"):
            status, got = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "pageviews"],
                                       "date_range": window, "dimensions": [dimension]})
            assert status == 200, got
            out[dimension] = by_dimension(got["results"])
        return out

    def expectations() -> dict[str, dict[str, list[int]]]:
        return {"event:page": stored_counts(sent, lambda i: i["path"]),
                "visit:device": stored_counts(sent, lambda i: i["device"].capitalize()),
                "visit:source": stored_counts(sent, lambda i: "Google" if i["referrer_source"] == "search" else "Direct / None")}

    assert answers() == expectations()
    status, got = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "percentage"], "date_range": window,
                               "dimensions": ["visit:device"], "filters": [["is", "visit:device", ["Mobile", "Tablet"]]],
                               "include": {"comparisons": {"mode": "previous_period"}}})
    assert status == 200 and {r["dimensions"][0]: r["metrics"][0] for r in got["results"]} == {
        k: v[0] for k, v in expectations()["visit:device"].items() if k != "Desktop"}
    report = reconciled(tally_env, "--from", window[0], "--to", window[1])
    assert report["drift"] == [] and report["rollup_drift"] == [], report
    assert report["rollup_days"] == len(past)

    # A sink replaying after an outage: a late event for a rolled-up day, and an event
    # stored before sent again. The API counts them as soon as they are stored (that day
    # is read from the raw rows), and the sink recomputes the day.
    late = rollup_events(past[0], 1, seed=900)
    send(late + [sent[0]])
    sent += late
    rec.aggregates_from_sent(version=2)
    rec.flush()
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL")[0][0] == len(sent), 90, "late event stored")
    assert answers() == expectations()
    wait_for(lambda: logged()[str(past[0])] > versions[str(past[0])], 90, "the day recomputed")
    assert answers() == expectations()

    # Once the replayed event is stored too and the day recomputed, every rollup is in use again.
    wait_for(lambda: reconciled(tally_env, "--from", window[0], "--to", window[1], within=0)["rollup_days"] == len(past),
             90, "all rollups in use")
    report = reconciled(tally_env, "--from", window[0], "--to", window[1])
    assert report["drift"] == [] and report["rollup_drift"] == [], report
    assert answers() == expectations()
