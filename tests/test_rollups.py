"""Daily breakdown rollups on the real engine (chDB, in this process): the builder
(sinks/rollups.py) against the raw rows, and the Stats API's SQL (api/sql.py) that
mixes rollups with raw rows, run through the SQL guard on an analyst session.

The builder is driven check by check here, without Kafka (nothing is on its way to
the warehouse); tests/test_api.py runs it inside the sink, on the real pipeline."""

from __future__ import annotations

import itertools
import json
import uuid
from datetime import UTC, date, datetime, time, timedelta

import pytest
from tally.api.request import parse_request
from tally.api.sql import USABLE_ROLLUPS, Builder
from tally.sinks.migrate import migrate
from tally.sinks.query import AnalystSession
from tally.sinks.reconcile import reconcile_rollups
from tally.sinks.rollups import DIMENSIONS, PRINTS_SQL, RULES, Rollups, kept_from
from tally.sinks.vocabulary import EXPRESSIONS, RAW_ONLY
from tally.sinks.warehouse import connect

from tally.config import Settings

pytestmark = pytest.mark.integration

COLUMNS = ["event_id", "received_at", "site", "hostname", "path", "event", "visitor_id", "referrer_host",
           "referrer_source", "utm_source", "utm_medium", "utm_campaign", "browser", "os", "device"]
REFERRERS = [("", "direct"), ("www.google.com", "search"), ("t.co", "social"), ("blog.example.org", "other"),
             ("a.test", "internal")]
TECH = [("Firefox", "Linux", "desktop"), ("Mobile Safari", "iOS", "mobile"), ("Chrome", "Android", "tablet"),
        ("Edge", "Windows", "desktop")]


def rows_for(day: date, n: int, site: str = "a.test", seed: int = 0) -> list[list]:
    """n events of one site and day, with every dimension varying."""
    out = []
    for i in range(n):
        k = i + seed
        ref, source = REFERRERS[k % len(REFERRERS)]
        browser, os_name, device = TECH[k % len(TECH)]
        utm = ("newsletter", "email", "launch") if k % 7 == 0 else (None, None, None)
        out.append([uuid.uuid4(), datetime.combine(day, time(0), UTC) + timedelta(seconds=37 * k % 86400),
                    site, site, f"/p/{k % 5}", "signup" if k % 6 == 0 else "pageview",
                    (k % 13) + 1000 * day.toordinal(), ref, source, *utm, browser, os_name, device])
    return out


def insert(client, rows: list[list]) -> None:
    client.insert("pageviews", rows, column_names=COLUMNS)


def raw_breakdown(client, dimension: str, day: date, site: str = "a.test") -> dict[str, tuple[int, int, int]]:
    """The raw-row computation the API made before rollups: one GROUP BY per dimension."""
    rows = client.query(f"SELECT {EXPRESSIONS[dimension]} AS v, countIf(event = 'pageview'), uniqExact(visitor_id), "
                        "count() FROM pageviews FINAL WHERE site = {s:String} AND toDate(received_at) = {d:Date} "
                        "GROUP BY v", parameters={"s": site, "d": day}).result_rows
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def rolled(client, dimension: str, day: date, site: str = "a.test") -> dict[str, tuple[int, int, int]]:
    rows = client.query("SELECT value, pageviews, visitors, events FROM breakdowns_daily WHERE site = {s:String} "
                        "AND day = {d:Date} AND dimension = {dim:String}",
                        parameters={"s": site, "d": day, "dim": dimension}).result_rows
    return {r[0]: (int(r[1]), int(r[2]), int(r[3])) for r in rows}


def log_of(client, day: date, site: str = "a.test") -> tuple | None:
    rows = client.query("SELECT version, raw_rows, rules FROM daily_stats_log FINAL "
                        "WHERE site = {s:String} AND day = {d:Date}", parameters={"s": site, "d": day}).result_rows
    return rows[0] if rows else None


@pytest.fixture
def warehouse(tmp_path):
    s = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path), "TALLY_RAW_RETENTION_DAYS": "30"})
    client = connect(s)
    migrate(client, s)
    session = AnalystSession(s)
    yield s, client, session
    session.close()
    client.close()


def api_answer(session: AnalystSession, s: Settings, body: dict, rollups: bool = True) -> list:
    """The Stats API's SQL for `body`, through the guard on a read-only analyst session;
    rollups=False: the raw-row SQL the API would run without them."""
    today = datetime.now(UTC).date()
    q = parse_request({"site_id": "a.test", **body}, today)
    sql = Builder(q, s.salt_period, kept_from(s, today) if rollups else None).build(q.range)
    assert ("daily_stats" in sql.text) == rollups, sql.text
    return json.loads(session.run(sql.text, "JSONCompact", sql.params))["data"]


SHAPES = [
    {"metrics": ["visitors", "pageviews"], "dimensions": ["event:page"], "pagination": {"limit": 3}},
    {"metrics": ["visitors"], "dimensions": ["visit:source"], "include": {"total_rows": True}},
    {"metrics": ["visitors", "events"], "dimensions": ["visit:device"]},
    {"metrics": ["events", "pageviews"], "dimensions": ["visit:browser"],
     "filters": [["contains", "visit:browser", ["fire", "SAF"], {"case_sensitive": False}]]},
    {"metrics": ["visitors"], "dimensions": ["visit:utm_campaign"], "order_by": [["visit:utm_campaign", "asc"]]},
    {"metrics": ["visitors", "pageviews", "events"], "dimensions": ["event:name"]},
]


def test_rollups_equal_the_raw_rows_and_heal_themselves(warehouse):
    s, client, session = warehouse
    client.command("SYSTEM STOP MERGES pageviews")  # duplicates stay unmerged until the test merges them
    today = datetime.now(UTC).date()
    old, mid, yesterday = today - timedelta(days=15), today - timedelta(days=5), today - timedelta(days=1)
    for i, day in enumerate((old, mid, yesterday, today)):
        insert(client, rows_for(day, 60 + 10 * i))
        insert(client, rows_for(day, 9, site="b.test", seed=3))
    # A batch replayed within a larger one (an identical block would be deduplicated by
    # ClickHouse itself): the same events twice, unmerged until FINAL or a merge.
    replayed = rows_for(mid, 4, seed=100)
    insert(client, replayed)
    insert(client, replayed + rows_for(mid, 1, seed=200))

    builder = Rollups(s, client)
    first = builder.check()
    # Days that are over are computed once their raw rows held still for a check; today never.
    assert first.computed == [] and set(first.waiting) == {old, mid, yesterday}
    second = builder.check()
    assert set(second.computed) == {old, mid, yesterday} and not second.waiting
    assert log_of(client, today) is None
    assert log_of(client, mid)[1] == 70 + 4 + 5  # the fingerprint counts the unmerged rows

    for day, dimension, site in itertools.product((old, mid, yesterday), DIMENSIONS, ("a.test", "b.test")):
        assert rolled(client, dimension, day, site) == raw_breakdown(client, dimension, day, site), (day, dimension)
    # The replayed events count once.
    assert sum(v[2] for v in rolled(client, "event:page", mid).values()) == 70 + 4 + 1
    assert builder.check().computed == []  # nothing changed

    # The API: rollups for old, mid and yesterday, raw rows for today; the same answers.
    ranges = [["30d"], [str(old), str(today)], [str(mid), str(yesterday)]]
    for shape, rng in itertools.product(SHAPES, ranges):
        body = {**shape, "date_range": rng[0] if len(rng) == 1 else rng}
        assert api_answer(session, s, body) == api_answer(session, s, body, rollups=False), body

    # Late events (a sink replaying after an outage): the API sees them at once (the
    # fingerprints no longer match, so those days are read from the raw rows), before any
    # check; the next check sees the change, the one after recomputes the days.
    before = log_of(client, mid)
    insert(client, rows_for(yesterday, 1, seed=7))
    insert(client, rows_for(mid, 2, seed=500))
    for shape in SHAPES:
        body = {**shape, "date_range": [str(old), str(today)]}
        assert api_answer(session, s, body) == api_answer(session, s, body, rollups=False), body
    third = builder.check()
    assert set(third.waiting) == {mid, yesterday}
    fourth = builder.check()
    assert set(fourth.computed) == {mid, yesterday}
    after = log_of(client, mid)
    assert after[0] > before[0] and after[1] == before[1] + 2
    for dimension in DIMENSIONS:
        assert rolled(client, dimension, mid) == raw_breakdown(client, dimension, mid), dimension
    for shape in SHAPES:
        body = {**shape, "date_range": [str(old), str(today)]}
        assert api_answer(session, s, body) == api_answer(session, s, body, rollups=False), body
    # The superseded version stays while a query that read the log before the switch may
    # still run (twice the analyst time limit), and is deleted at the first check after.
    versions = "SELECT count(DISTINCT version) FROM daily_stats WHERE day = {d:Date}"
    assert client.query(versions, parameters={"d": mid}).result_rows[0][0] == 2
    builder.check()
    assert client.query(versions, parameters={"d": mid}).result_rows[0][0] == 2
    builder.grace_seconds = 0
    builder.check()
    assert client.query(versions, parameters={"d": mid}).result_rows[0][0] == 1

    # The API reads the rollups (a forged rollup value shows), and reconcile finds the drift.
    version = log_of(client, mid)[0]
    client.insert("daily_stats", [["a.test", mid, "visit:source", "Forged", 1, 1, 1, version]],
                  column_names=["site", "day", "dimension", "value", "pageviews", "visitors", "events", "version"])
    body = {"metrics": ["visitors"], "dimensions": ["visit:source"], "date_range": [str(mid), str(mid)]}
    assert ["Forged", 1] in api_answer(session, s, body)
    drift = [r for r in reconcile_rollups(s, old, today) if r.drift]
    assert [(r.site, r.day, r.differing) for r in drift] == [("a.test", str(mid), 1)]
    client.command("DELETE FROM daily_stats WHERE value = 'Forged'")
    assert not any(r.drift for r in reconcile_rollups(s, old, today))

    # Merging folds the replayed duplicates: the fingerprint changes, the numbers do not.
    client.command("SYSTEM START MERGES pageviews")
    client.command("OPTIMIZE TABLE pageviews FINAL")
    builder.check()
    assert set(builder.check().computed) == {mid}
    assert log_of(client, mid)[1] == 75 + 2
    assert rolled(client, "event:page", mid) == raw_breakdown(client, "event:page", mid)


def rolled_up(s: Settings, client, days: list[date], n: int = 40) -> Rollups:
    """n events on each day, rolled up by a builder's two checks (the second computes them)."""
    for day in days:
        insert(client, rows_for(day, n))
    builder = Rollups(s, client)
    builder.check()
    assert set(builder.check().computed) == set(days)
    return builder


def test_vocabulary_changes(warehouse):
    s, client, session = warehouse
    today = datetime.now(UTC).date()
    old, recent = today - timedelta(days=20), today - timedelta(days=6)
    builder = rolled_up(s, client, [old, recent])
    body = {"metrics": ["visitors", "pageviews"], "dimensions": ["visit:source"], "date_range": [str(old), str(today)]}
    expected = api_answer(session, s, body, rollups=False)

    # A rollup made with another vocabulary is not used while its raw rows exist, and
    # the next check recomputes it.
    stamp = client.query("SELECT raw_stamp FROM daily_stats_log FINAL WHERE day = {d:Date}",
                         parameters={"d": recent}).result_rows[0][0]
    version, rows, _ = log_of(client, recent)
    client.insert("daily_stats_log", [["a.test", recent, version, rows, stamp, "older-rules", 0, datetime.now(UTC),
                                       version + 1]],
                  column_names=["site", "day", "version", "raw_rows", "raw_stamp", "rules", "sealed", "computed_at",
                                "updated"])
    assert api_answer(session, s, body) == expected
    assert builder.check().computed == [recent]
    assert log_of(client, recent)[2] != "older-rules"
    assert api_answer(session, s, body) == expected


def test_expired_raw_rows(warehouse):
    """A rollup sealed just before its raw rows expire answers for them afterwards; a day
    that expires without one is read from what is left of its raw rows."""
    s, client, session = warehouse
    today = datetime.now(UTC).date()
    sealed, stale = today - timedelta(days=20), today - timedelta(days=19)
    rolled_up(s, client, [sealed, stale])

    def body(day: date) -> dict:
        return {"metrics": ["visitors", "pageviews"], "dimensions": ["visit:source"], "date_range": [str(day), str(day)]}

    # A late row for `stale`: its rollup no longer matches. The raw rows of both days
    # expire soon (retention 21 days): the builder seals the rollup that still matches.
    insert(client, rows_for(stale, 1, seed=900))
    expected = api_answer(session, s, body(sealed), rollups=False)
    soon = Settings.from_env({"TALLY_STATE_DIR": str(s.state_dir), "TALLY_RAW_RETENTION_DAYS": "21"})
    assert kept_from(soon, today) == sealed
    report = Rollups(soon, client).check()
    assert report.sealed == [sealed] and report.waiting == [stale]
    assert api_answer(session, soon, body(sealed)) == expected

    # The raw rows expire (deleted here as the TTL would): the sealed rollup answers for
    # its day, the other day's raw rows answer for it.
    shorter = Settings.from_env({"TALLY_STATE_DIR": str(s.state_dir), "TALLY_RAW_RETENTION_DAYS": "12"})
    assert kept_from(shorter, today) > stale
    client.command("DELETE FROM pageviews WHERE toDate(received_at) = {d:Date}", parameters={"d": sealed})
    client.command("DELETE FROM pageviews WHERE toDate(received_at) = {d:Date} AND path = '/p/1'", parameters={"d": stale})
    assert raw_breakdown(client, "visit:source", sealed) == {}
    expired = Rollups(shorter, client)
    assert expired.check().computed + expired.check().computed == []
    assert api_answer(session, shorter, body(sealed)) == expected
    left = api_answer(session, shorter, body(stale), rollups=False)
    assert left and api_answer(session, shorter, body(stale)) == left
    assert rolled(client, "visit:source", stale) != raw_breakdown(client, "visit:source", stale)


def test_a_replay_that_changed_a_row_is_seen_after_the_merge(warehouse):
    """The same event again with another path (a replay enriched differently), folded by a
    merge into one row per event_id: the same count, another content, another fingerprint."""
    s, client, session = warehouse
    day = datetime.now(UTC).date() - timedelta(days=3)
    rolled_up(s, client, [day], n=30)
    changed = list(rows_for(day, 1)[0])  # the day's first event again: its time, attributes and event_id
    changed[COLUMNS.index("event_id")] = client.query(
        "SELECT event_id FROM pageviews WHERE received_at = {t:DateTime64(3, 'UTC')}",
        parameters={"t": changed[COLUMNS.index("received_at")]}).result_rows[0][0]
    changed[COLUMNS.index("path")] = "/changed"
    insert(client, [changed])
    client.command("OPTIMIZE TABLE pageviews FINAL")
    assert client.query("SELECT count() FROM pageviews").result_rows[0][0] == 30
    body = {"metrics": ["visitors", "pageviews"], "dimensions": ["event:page"], "date_range": [str(day), str(day)]}
    answer = api_answer(session, s, body)
    assert "/changed" in [row[0] for row in answer] and answer == api_answer(session, s, body, rollups=False)


def test_fingerprints_come_from_the_projection(warehouse):
    """The builder's and the API's fingerprint queries are answered by `day_prints`, not by
    reading every row: the expressions match the projection's."""
    s, client, session = warehouse
    today = datetime.now(UTC).date()
    insert(client, rows_for(today - timedelta(days=2), 50))
    plan = "\n".join(r[0] for r in client.query("EXPLAIN " + PRINTS_SQL, parameters={
        "lo": today - timedelta(days=5), "hi": today}).result_rows)
    assert "ReadFromMergeTree (day_prints)" in plan, plan
    params = {"site": "a.test", "d0": today - timedelta(days=7), "d1": today, "kept": kept_from(s, today), "rules": RULES}
    plan = "\n".join(r[0] for r in client.query("EXPLAIN " + USABLE_ROLLUPS, parameters=params).result_rows)
    assert "ReadFromMergeTree (day_prints)" in plan, plan


def test_utm_content_term_and_screen_are_read_from_the_raw_rows(warehouse):
    """The dimensions the rollups leave out (vocabulary.RAW_ONLY): a day that has a rollup
    still answers them from its raw rows, and the answer equals a GROUP BY over those rows,
    mixed with rolled-up days or not."""
    s, client, session = warehouse
    today = datetime.now(UTC).date()
    days = (today - timedelta(days=3), today - timedelta(days=2))
    contents, terms, screens = ["banner", None, "video"], ["snow boots", None], ["Mobile", "Desktop", None]
    for day in days:
        rows = rows_for(day, 40)
        for i, row in enumerate(rows):
            screen = screens[i // 3 % 3]
            row += [contents[i % 3], terms[i % 2], {"screen": screen} if screen else {}]
        client.insert("pageviews", rows, column_names=[*COLUMNS, "utm_content", "utm_term", "props"])
    builder = Rollups(s, client)
    builder.check()
    assert set(builder.check().computed) == set(days)
    stored = client.query("SELECT DISTINCT dimension FROM daily_stats").result_rows
    assert {d for (d,) in stored} == set(DIMENSIONS) and not RAW_ONLY & set(DIMENSIONS)

    rng = [str(days[0]), str(today)]
    for dimension in sorted(RAW_ONLY):
        body = {"metrics": ["pageviews", "visitors", "events"], "dimensions": [dimension], "date_range": rng}
        got = {r[0]: tuple(r[1:]) for r in api_answer(session, s, body, rollups=False)}
        q = parse_request({"site_id": "a.test", **body}, today)
        assert "daily_stats" not in Builder(q, s.salt_period, kept_from(s, today)).build(q.range).text
        want: dict[str, tuple[int, int, int]] = {}
        for day in days:  # rows_for's visitor ids differ from day to day: the days' figures add up
            for value, figures in raw_breakdown(client, dimension, day).items():
                want[value] = tuple(a + b for a, b in zip(want.get(value, (0, 0, 0)), figures, strict=True))
        assert got == want, dimension
        assert "(not set)" in got
    # Filters on them, with a rolled-up dimension: the same answer with rollups or without.
    body = {"metrics": ["visitors", "pageviews"], "dimensions": ["visit:source"], "date_range": rng,
            "filters": [["is", "visit:utm_content", ["banner"]], ["is_not", "visit:screen", ["Mobile"]]]}
    q = parse_request({"site_id": "a.test", **body}, today)
    sql = Builder(q, s.salt_period, kept_from(s, today)).build(q.range)
    assert "daily_stats" not in sql.text
    got = json.loads(session.run(sql.text, "JSONCompact", sql.params))["data"]
    want = client.query(f"SELECT {EXPRESSIONS['visit:source']} AS v, uniqExact(visitor_id), countIf(event = 'pageview') "
                        "FROM pageviews FINAL WHERE site = 'a.test' AND utm_content = 'banner' "
                        "AND props['screen'] != 'Mobile' GROUP BY v").result_rows
    assert got and sorted(map(tuple, got)) == sorted((v, int(a), int(b)) for v, a, b in want)
