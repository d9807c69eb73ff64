"""The Stats API's pure parts: request validation (Plausible's messages and status
semantics), date ranges, time labels, comparisons, where a query reads from, keys and
their rate limit, and the secret-free files and output. Cases follow Plausible's own
Stats API tests where they apply. The queries themselves run on the real stack in
test_api.py."""

from __future__ import annotations

import asyncio
import json
import os
import stat
from datetime import UTC, date, datetime

import pytest
from click.testing import CliRunner
from tally.api.keys import INVALID, MISSING, KeyChecker, hash_key, key_id_of, new_key
from tally.api.request import Range, RequestError, parse_date_range, parse_request
from tally.api.runner import change, comparison_range, percent_change, time_labels
from tally.api.sql import Builder, aggregate_kind, rollup_dimension
from tally.sinks.cli import cell

from tally.config import Settings

TODAY = date(2021, 1, 14)


def body(**kw):
    return {"site_id": "example.com", "metrics": ["visitors"], "date_range": "all", **kw}


def error_of(b: dict) -> str:
    with pytest.raises(RequestError) as info:
        parse_request(b, TODAY)
    return str(info.value)


@pytest.mark.parametrize("b, message", [
    (body(dimensions=["badproperty"]), '#/dimensions/0: Invalid dimension "badproperty"'),
    (body(dimensions=["event:props:"]), '#/dimensions/0: Invalid dimension "event:props:"'),
    (body(date_range="bad_period", dimensions=["event:name"]), '#/date_range: Invalid date range "bad_period"'),
    (body(metrics=["visitors", "baa"]), '#/metrics/1: Invalid metric "baa"'),
    (body(metrics=["visitors", "visitors"]), "#/metrics: Expected items to be unique but they were not."),
    ({"metrics": ["visitors"]}, "#: Required properties site_id, date_range were not present."),
    (body(extra=1), "#/extra: Schema does not allow additional properties."),
    (body(order_by=[["pageviews", "desc"]]),
     "#/order_by/0: Invalid order_by entry [\"pageviews\", \"desc\"]. Entry is not a queried metric or dimension."),
    (body(include={"time_labels": True}), "#/include/time_labels: Invalid include.time_labels: requires a time dimension."),
    (body(pagination={"limit": 0}), "#/pagination/limit"),
    (body(filters=[["is", "visit:browser", "Chrome"]]), "#/filters/0/2"),
    (body(filters=[["or", [["is", "event:hostname", ["a"]]]]]), "can only be filtered at the top level"),
    (body(filters=[["equals", "event:page", ["/"]]]), "#/filters/0: Invalid filter"),
])
def test_validation_messages_name_the_field(b, message):
    assert message in error_of(b)


@pytest.mark.parametrize("b, name", [
    (body(metrics=["group_conversion_rate"]), "#/metrics/0: Metric `group_conversion_rate` is not supported"),
    (body(metrics=["visitors", "exit_rate"]), "#/metrics/1: Metric `exit_rate`"),
    (body(dimensions=["visit:country_name"]), "#/dimensions/0: Dimension `visit:country_name` is not supported"),
    (body(dimensions=["visit:channel"]), "Dimension `visit:channel`"),
    (body(filters=[["is", "visit:city", ["x"]]]), "#/filters/0/1: Filtering on `visit:city`"),
])
def test_unsupported_metrics_and_dimensions_are_named(b, name):
    assert name in error_of(b)


@pytest.mark.parametrize("b, message", [
    (body(metrics=["visitors", "bounce_rate"], dimensions=["event:page"]),
     "#/metrics/1: Metric `bounce_rate` cannot be queried with the dimension `event:page` (#/dimensions/0)"),
    (body(metrics=["visit_duration"], filters=[["is", "visit:device", ["Mobile"]], ["contains", "event:page", ["/a"]]]),
     "#/metrics/0: Metric `visit_duration` cannot be queried with a filter on `event:page` (#/filters/1)"),
    (body(metrics=["visits"], filters=[["not", ["is", "event:name", ["signup"]]]]),
     "Metric `visits` cannot be queried with a filter on `event:name`"),
    (body(metrics=["views_per_visit"], dimensions=["visit:source", "event:hostname"]),
     "#/metrics/0: Metric `views_per_visit` cannot be queried with the dimension `event:hostname`"),
    (body(dimensions=["visit:entry_page", "event:page"]),
     "#/dimensions/1: `event:page` cannot be combined with `visit:entry_page`"),
    (body(dimensions=["event:name"], filters=[["is", "visit:exit_page", ["/"]]]),
     "#/dimensions/0: `event:name` cannot be combined with `visit:exit_page`"),
    (body(filters=[["is", "visit:entry_page", ["/"]], ["is", "event:page", ["/"]]]),
     "#/filters/1: `event:page` cannot be combined with `visit:entry_page`"),
])
def test_visit_metrics_and_event_dimensions_do_not_mix(b, message):
    assert message in error_of(b)


@pytest.mark.parametrize("b", [
    body(metrics=["visitors", "pageviews", "events", "visits", "bounce_rate", "visit_duration", "views_per_visit"]),
    body(metrics=["visits", "percentage"], dimensions=["visit:country"], filters=[["is", "visit:country", ["GB"]]]),
    body(metrics=["visitors", "visits"], dimensions=["visit:entry_page"], order_by=[["visits", "desc"]]),
    body(metrics=["pageviews"], dimensions=["visit:exit_page", "time:day"]),
    body(metrics=["bounce_rate"], dimensions=["visit:source"], filters=[["is", "visit:entry_page", ["/"]]]),
    body(metrics=["visitors", "pageviews"], dimensions=["event:page"], filters=[["is", "visit:country", ["SE"]]]),
])
def test_visit_metrics_and_dimensions_are_accepted(b):
    q = parse_request(b, TODAY)
    assert q.metrics == tuple(b["metrics"])


@pytest.mark.parametrize("b, message", [
    (body(metrics=["time_on_page", "visits"]),
     "#/metrics/0: Metric `time_on_page` cannot be queried with the visit metric `visits` (#/metrics/1)"),
    (body(metrics=["scroll_depth"], dimensions=["visit:entry_page"]),
     "#/metrics/0: Metric `scroll_depth` cannot be queried with the dimension `visit:entry_page` (#/dimensions/0)"),
    (body(metrics=["visitors", "time_on_page"], filters=[["is", "event:name", ["signup"]]]),
     "#/metrics/1: Metric `time_on_page` cannot be queried with a filter on `event:name` (#/filters/0)"),
    (body(metrics=["scroll_depth"], dimensions=["event:props:plan"]),
     "Metric `scroll_depth` cannot be queried with the dimension `event:props:plan`"),
    (body(metrics=["visits"], dimensions=["event:props:plan"]),
     "#/metrics/0: Metric `visits` cannot be queried with the dimension `event:props:plan` (#/dimensions/0)"),
    (body(dimensions=["event:props:"]), "#/dimensions/0: Invalid dimension \"event:props:\": needs a property name"),
    (body(dimensions=["event:props:tally:scroll_depth"]), "names a reserved property"),
    (body(filters=[["is", "event:props:tally:engaged_ms", ["1"]]]), "#/filters/0/1: Invalid filter dimension"),
])
def test_engagement_metrics_and_props_are_checked(b, message):
    assert message in error_of(b)


def test_engagement_and_props_queries():
    def sql(**kw):
        q = parse_request(body(date_range="7d", **kw), TODAY)
        return Builder(q, "day", TODAY).build(q.range)

    top = sql(metrics=["visitors", "pageviews", "time_on_page", "scroll_depth"], dimensions=["event:page"],
              filters=[["is", "visit:country", ["SE"]]], order_by=[["scroll_depth", "desc"]])
    assert "event = 'engagement'" in top.text and "event != 'engagement'" in top.text and "ASOF LEFT JOIN" in top.text
    assert "daily_stats" not in top.text and "aggregates" not in top.text and "ORDER BY m_scroll_depth DESC" in top.text
    # Every count of events leaves engagement events out, from every source.
    for kw in ({"metrics": ["visitors"], "dimensions": ["visit:source"]},
               {"metrics": ["visitors"], "filters": [["is", "event:page", ["/"]]]},
               {"metrics": ["visitors", "visits"]}):
        assert "event != 'engagement'" in sql(**kw).text
    props = sql(metrics=["visitors", "events"], dimensions=["event:props:plan"], order_by=[["event:props:plan", "asc"]],
                filters=[["is", "event:props:plan", ["(none)"]]])
    assert "plan" not in props.text and list(props.params.values()).count("plan") == 2  # the name is a parameter
    assert "'(none)'" in props.text and "ORDER BY d0 ASC" in props.text


def test_visit_queries_read_the_sessions_table():
    def sql(**kw):
        q = parse_request(body(date_range="7d", **kw), TODAY)
        return Builder(q, "day", TODAY).build(q.range).text

    mixed = sql(metrics=["visitors", "visits"], dimensions=["visit:country"])
    assert "FROM pageviews FINAL" in mixed and "FROM sessions FINAL" in mixed and "UNION ALL" in mixed
    assert "daily_stats" not in mixed and "aggregates" not in mixed
    only = sql(metrics=["visitors", "pageviews"], dimensions=["visit:entry_page"])  # visitors of those visits
    assert "FROM sessions FINAL" in only and "FROM pageviews" not in only
    assert "FROM pageviews" not in sql(metrics=["bounce_rate"])
    assert "sessions" not in sql(metrics=["visitors"], dimensions=["visit:country"])
    q = parse_request(body(metrics=["visitors", "percentage"], dimensions=["visit:exit_page"]), TODAY)
    totals = Builder(q).build(q.range, totals=True)  # the denominator: visitors of the visits too
    assert "FROM sessions FINAL" in totals.text and "FROM pageviews" not in totals.text
    # Plausible's change: points for bounce_rate (none from 0), percent for the rest
    assert [change("bounce_rate", 40, 25), change("bounce_rate", 0, 25), change("visits", 4, 5),
            change("views_per_visit", 2.0, 2.5)] == [-15, None, 25, 25]


@pytest.mark.parametrize("value, days", [
    ("day", ("2021-01-14", "2021-01-14")),
    ("7d", ("2021-01-07", "2021-01-13")),
    ("30d", ("2020-12-15", "2021-01-13")),
    ("month", ("2021-01-01", "2021-01-31")),
    ("6mo", ("2020-07-01", "2020-12-31")),
    ("12mo", ("2020-01-01", "2020-12-31")),
    ("year", ("2021-01-01", "2021-12-31")),
    ("all", ("2020-11-02", "2021-01-14")),
    (["2021-01-01", "2021-01-31"], ("2021-01-01", "2021-01-31")),
])
def test_date_ranges_are_plausibles(value, days):
    r = parse_date_range(value, TODAY, date(2020, 11, 2))
    assert (str(r.first_day), str(r.last_day)) == days and r.whole_days


def test_timestamp_ranges_keep_their_instants():
    r = parse_date_range(["2024-01-01T00:00:00+03:00", "2024-01-02T12:00:00+03:00"], TODAY, None)
    assert r.first == datetime(2023, 12, 31, 21, tzinfo=UTC) and not r.whole_days
    with pytest.raises(RequestError, match="#/date_range"):
        parse_date_range(["2024-01-02", "2024-01-01"], TODAY, None)


def test_defaults_resolve_like_plausible():
    q = parse_request(body(dimensions=["time"], date_range="7d"), TODAY)
    assert q.dimensions == ("time:day",) and q.order_by == (("time:day", "asc"), ("visitors", "desc"))
    assert parse_request(body(dimensions=["time"], date_range="day"), TODAY).dimensions == ("time:hour",)
    assert parse_request(body(dimensions=["time"], date_range="12mo"), TODAY).dimensions == ("time:week",)
    q = parse_request(body(metrics=["pageviews", "visitors"]), TODAY)
    assert q.order_by == (("pageviews", "desc"),) and (q.limit, q.offset) == (10_000, 0)


def test_time_labels():
    assert time_labels("time:day", Range.of_days(date(2021, 1, 7), date(2021, 1, 9))) == [
        "2021-01-07", "2021-01-08", "2021-01-09"]
    assert time_labels("time:hour", Range.of_days(date(2021, 1, 7), date(2021, 1, 7)))[:2] == [
        "2021-01-07 00:00:00", "2021-01-07 01:00:00"]
    # a week starting before the range is labelled with the range's first day (2021-01-06 is a Wednesday)
    assert time_labels("time:week", Range.of_days(date(2021, 1, 6), date(2021, 1, 20))) == [
        "2021-01-06", "2021-01-11", "2021-01-18"]
    assert time_labels("time:month", Range.of_days(date(2020, 11, 15), date(2021, 1, 3))) == [
        "2020-11-01", "2020-12-01", "2021-01-01"]


def test_comparison_periods():
    q = parse_request(body(date_range=["2021-01-07", "2021-01-13"], include={"comparisons": {"mode": "previous_period"}}),
                      TODAY)
    r = comparison_range(q, TODAY)
    assert (str(r.first_day), str(r.last_day)) == ("2020-12-31", "2021-01-06")
    q = parse_request(body(date_range="month", include={"comparisons": {"mode": "year_over_year"}}), TODAY)
    r = comparison_range(q, TODAY)  # a period running into the future is compared up to today
    assert (str(r.first_day), str(r.last_day)) == ("2020-01-02", "2020-01-15")
    assert [percent_change(3, 1), percent_change(0, 1), percent_change(0, 0), percent_change(12.5, 50.0)] == [
        -67, 100, 0, 300]


def test_where_a_query_reads_from():
    def kind(salt: str = "day", **kw):
        q = parse_request(body(**kw), TODAY)
        return aggregate_kind(q, q.range, None, salt)

    assert kind(metrics=["visitors", "pageviews"], date_range="30d") == "site_day"
    assert kind(dimensions=["time:day"], date_range="30d") == "site_day"
    assert kind(dimensions=["time:hour"], date_range="day") == "site_hour"
    assert kind(metrics=["pageviews"], dimensions=["event:page"], date_range="7d") == "path_day"
    assert kind(metrics=["visitors"], dimensions=["event:page"], date_range="7d") is None
    assert kind(metrics=["events"], date_range="7d") is None
    assert kind(filters=[["is", "visit:device", ["Mobile"]]], date_range="7d") is None
    assert kind(salt="month", date_range="7d") is None  # multi-day visitors under a monthly salt
    assert kind(date_range=["2021-01-01T10:00:00Z", "2021-01-02T10:00:00Z"]) is None


def test_queries_carry_values_as_parameters_only():
    q = parse_request(body(date_range="7d", dimensions=["visit:browser"],
                           filters=[["contains", "event:page", ["'; DROP TABLE x --"]]]), TODAY)
    sql = Builder(q).build(q.range)
    assert "DROP" not in sql.text and "example.com" not in sql.text
    assert ["'; DROP TABLE x --"] in sql.params.values() and sql.params["site"] == "example.com"


def test_keys_are_random_and_checked_by_hash():
    key, record = new_key("ci", ("a.test",))
    assert key.startswith("tly_") and key_id_of(key) == record.key_id and record.key_hash == hash_key(key)
    assert key not in json.dumps(record.to_json())
    now = [0.0]
    store = {record.key_id: record}

    async def find(key_id: str):
        return store.get(key_id)

    checker = KeyChecker(find, per_hour=3600, burst=2, clock=lambda: now[0])

    async def check(header):
        return await checker.check(header)

    assert asyncio.run(check(None)).message == MISSING
    assert asyncio.run(check(f"Bearer {key[:-1]}x")).message == INVALID
    assert asyncio.run(check("Bearer tly_" + "0" * 12 + "_" + "x" * 43)).status == 401
    assert [asyncio.run(check(f"Bearer {key}")).status for _ in range(3)] == [200, 200, 429]
    now[0] += 1.0  # one request per second refills
    assert asyncio.run(check(f"Bearer {key}")).status == 200


def test_terminal_cells_are_cut_json_and_csv_are_not():
    long_path = "/" + "a" * 2000
    assert len(cell(long_path)) == 80 and cell(long_path).endswith("…")
    assert cell("/short") == "/short"


def test_secrets_stay_out_of_files_and_output(tmp_path):
    from tally.ops.stack import write_private

    edge = "edge-secret-value-Zq8vN3xK7pLm2RtY9wBc4HdJ6fGs"  # 32+ bytes, as the setting demands
    env = {"TALLY_EDGE_SECRET": edge, "TALLY_CLICKHOUSE_URL": "http://tally:pw123@ch:8123/db",
           "TALLY_QUERY_TOKEN": "t" * 40, "TALLY_STATE_DIR": str(tmp_path)}
    s = Settings.from_env(env)
    text = json.dumps(s.public_env())
    assert edge not in text and "pw123" not in text and "t" * 40 not in text
    write_private(tmp_path / "run" / "env.json", text)
    assert stat.S_IMODE(os.stat(tmp_path / "run" / "env.json").st_mode) == 0o600
    from tally.ops.cli import main

    out = CliRunner().invoke(main, ["config", "check"], env=env)
    assert out.exit_code == 0 and "pw123" not in out.output and edge not in out.output
    assert '"edge_secret": "***"' in out.output


def test_one_dimension_breakdowns_read_the_daily_rollups():
    def dim(salt: str = "day", **kw):
        q = parse_request(body(**kw), TODAY)
        return rollup_dimension(q, q.range, None, salt)

    assert dim(dimensions=["visit:source"], date_range="30d") == "visit:source"
    assert dim(dimensions=["event:page"], date_range="7d", filters=[["contains", "event:page", ["/docs"]]]) == "event:page"
    assert dim(dimensions=["visit:source"], filters=[["is", "visit:device", ["Mobile"]]]) is None  # selects rows
    assert dim(dimensions=["visit:source", "visit:device"]) is None
    assert dim(dimensions=["time:day"], date_range="30d") is None  # the aggregates answer it
    assert dim(salt="month", dimensions=["visit:source"], date_range="30d") is None  # visitors over days
    assert dim(salt="month", metrics=["pageviews"], dimensions=["visit:source"], date_range="30d") == "visit:source"
    assert dim(salt="month", dimensions=["visit:source"], date_range="day") == "visit:source"
    assert dim(dimensions=["visit:os"], date_range=["2021-01-01T10:00:00Z", "2021-01-02T10:00:00Z"]) is None
    q = parse_request(body(dimensions=["visit:os"], date_range="7d"), TODAY)
    assert "daily_stats" in Builder(q, "day", TODAY).build(q.range).text
    assert "daily_stats" not in Builder(q).build(q.range).text  # no retention floor given: raw rows only
    totals = Builder(q, "day", TODAY).build(q.range, totals=True)  # the percentage denominator
    assert "daily_stats" not in totals.text and "site_day" in totals.text
