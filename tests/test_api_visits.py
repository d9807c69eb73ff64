"""Visit metrics and dimensions of the Stats API on the real stack: scripted beacons (known
times, countries, browsers, referrers) through the real broker, the stream worker (which
builds the sessions) and the sink into chDB, then `tally dashboard` answering.

Every expected figure is recomputed here from the beacons sent, by this file's own
sessionising (a visitor's events less than 30 minutes apart are one visit; a visit's
country, browser and source are its first pageview's), not by the stream's code."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import pytest
from tally.ops.stack import http_ok, worker_ready

from tests.conftest import wait_for
from tests.helpers import query_rows
from tests.stream_support import CHROME, FIREFOX, IPHONE, beacon, produce_batches
from tests.test_api import api, new_key

pytestmark = pytest.mark.integration

TIMEOUT = timedelta(minutes=30)  # TALLY_SESSION_TIMEOUT_SECONDS' default
COUNTRIES = ["GB", "JP", "SE", "US", ""]
BROWSERS = [(FIREFOX, "Firefox"), (CHROME, "Chrome"), (IPHONE, "Safari")]
REFERRERS = [("https://www.google.com/search?q=tally", "Google"), (None, "Direct / None"),
             ("https://someblog.org/post", "someblog.org")]
INTERNAL = "https://example.com/"  # a click inside the site: no source
# Visits as (minutes after the start, path, event name).
PATTERNS = [
    [(0, "/", "pageview")],
    [(0, "/", "pageview"), (4, "/docs", "pageview"), (11, "/pricing", "pageview")],
    [(0, "/blog/a", "pageview"), (2, "/blog/a", "signup")],
    [(0, "/pricing", "pageview"), (25, "/docs", "pageview"), (49, "/", "pageview")],  # gaps under 30 minutes
    [(0, "/docs", "pageview")],
    [(0, "/", "pageview"), (1, "/", "pageview")],
]


@dataclass
class Visit:
    visitor: tuple
    start: datetime
    end: datetime
    pageviews: int
    events: int
    entry: str
    exit: str
    country: str
    browser: str
    source: str

    @property
    def bounce(self) -> bool:
        return self.pageviews == 1 and self.events == 1


def script(day: datetime) -> list[dict]:
    """The beacons of `day` (12 visitors, 15 visits) and of the day before (4 visits), each
    with what it means: visitor, country, browser, and its own source."""
    out = []

    def visit(who: str, ua: int, country: str, start: datetime, pattern: list, ref: int) -> None:
        for j, (minutes, path, event) in enumerate(pattern):
            referrer, source = REFERRERS[ref] if j == 0 else (INTERNAL, "Direct / None")
            at = start + timedelta(minutes=minutes, seconds=13 * j)
            out.append({**beacon(path=path, ua=BROWSERS[ua][0], ip=who, received_at=at, referrer=referrer,
                                 event=event, country=country),
                        "visitor": (at.date(), who, ua), "browser": BROWSERS[ua][1], "source": source})

    for v in range(12):
        start = day + timedelta(hours=8 + v % 5, minutes=7 * v, seconds=v)
        visit(f"ip-{v}", v % 3, COUNTRIES[v % 5], start, PATTERNS[v % 6], v % 3)
        if v % 4 == 0:  # a second visit two hours later
            visit(f"ip-{v}", v % 3, COUNTRIES[v % 5], start + timedelta(hours=2), PATTERNS[(v + 1) % 6], (v + 1) % 3)
    before = day - timedelta(days=1)
    for v, p in enumerate([0, 1, 0, 2]):
        visit(f"ip-b{v}", v % 3, "GB", before + timedelta(hours=20, minutes=10 * v), PATTERNS[p], v % 3)
    return out


def visits_of(beacons: list[dict]) -> list[Visit]:
    by_visitor: dict[tuple, list[dict]] = defaultdict(list)
    for b in beacons:
        by_visitor[b["visitor"]].append(b)
    out = []
    for events in by_visitor.values():
        events.sort(key=lambda b: b["received_at"])
        runs = [[events[0]]]
        for b in events[1:]:
            if b["received_at"] - runs[-1][-1]["received_at"] < TIMEOUT:
                runs[-1].append(b)
            else:
                runs.append([b])
        for run in runs:
            views = [b for b in run if b["event"] == "pageview"]
            out.append(Visit(run[0]["visitor"], run[0]["received_at"], run[-1]["received_at"], len(views), len(run), views[0]["path"],
                             views[-1]["path"], views[0]["country"] or "(not set)", views[0]["browser"],
                             views[0]["source"]))
    return out


def figures(visits: list[Visit], metrics: list[str], beacons: list[dict] | None = None) -> list:
    """The metrics as the API must answer them: ratios rounded half up; event metrics from the
    beacons, or (no beacons given) from the visits themselves."""
    n = len(visits)
    out = {"visits": n,
           "bounce_rate": (200 * sum(v.bounce for v in visits) + n) // (2 * n) if n else 0,
           "visit_duration": (2 * sum((v.end - v.start) // timedelta(milliseconds=1) for v in visits) + 1000 * n)
           // (2000 * n) if n else 0,
           "views_per_visit": (200 * sum(v.pageviews for v in visits) + n) // (2 * n) / 100 if n else 0}
    if beacons is not None:
        out.update(visitors=len({b["visitor"] for b in beacons}),
                   pageviews=sum(b["event"] == "pageview" for b in beacons), events=len(beacons))
    else:
        out.update(visitors=len({v.visitor for v in visits}), pageviews=sum(v.pageviews for v in visits),
                   events=sum(v.events for v in visits))
    return [out[m] for m in metrics]


def grouped(visits: list[Visit], key, metrics: list[str], beacons: list[dict] | None = None, event_key=None) -> dict:
    """Figures per value: of visits by `key`, and (if given) of beacons by `event_key`."""
    values = {key(v) for v in visits} | ({event_key(b) for b in beacons} if beacons is not None else set())
    return {value: figures([v for v in visits if key(v) == value], metrics,
                           [b for b in beacons if event_key(b) == value] if beacons is not None else None)
            for value in values}


def by_value(results: list[dict]) -> dict:
    return {r["dimensions"][0] if len(r["dimensions"]) == 1 else tuple(r["dimensions"]): r["metrics"] for r in results}


def start_scripted(tally_env, spawn, script_of) -> tuple[datetime, list[dict]]:
    """The day two days ago and `script_of(day)`'s beacons, sent through the real broker to the
    worker (its clock a day later: every event within the allowed lateness) and the sink;
    the dashboard up."""
    day = datetime.combine(datetime.now(UTC).date() - timedelta(days=2), datetime.min.time(), UTC)
    worker_now = day + timedelta(days=1, hours=6)
    tally_env.vars.update({"TALLY_CLOCK_OFFSET_SECONDS": str(int((worker_now - datetime.now(UTC)).total_seconds())),
                           "TALLY_API_RATE_LIMIT_BURST": "1000"})
    s = tally_env.settings
    beacons = script_of(day)
    produce_batches(s, [beacons], partition=0)
    spawn(tally_env, "sink")
    spawn(tally_env, "worker")
    spawn(tally_env, "dashboard")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    wait_for(lambda: worker_ready(s), 90, "worker in its consumer group")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.dashboard_port}/healthz"), 30, "dashboard")
    return day, beacons


def test_visit_metrics_and_dimensions_equal_the_visits_sent(tally_env, spawn):
    day, beacons = start_scripted(tally_env, spawn, script)
    s = tally_env.settings
    every = visits_of(beacons)
    stored = [len(every), sum(v.pageviews for v in every), sum(v.events for v in every)]
    wait_for(lambda: [int(x) for x in query_rows(s, "SELECT count(), sum(pageviews), sum(events) FROM sessions FINAL "
                                                    "WHERE site = 'example.com' AND deleted = 0")[0]] == stored,
             120, f"the sessions table to hold the {len(every)} visits sent")
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL")[0][0] == len(beacons), 60, "every beacon")

    key = new_key(tally_env, "--site", "example.com")
    today = [b for b in beacons if b["received_at"].date() == day.date()]
    visits = [v for v in every if v.start.date() == day.date()]
    assert len(visits) == 15 and len(every) == 19

    def ask(**kw) -> dict:
        status, got = api(s, key, {"site_id": "example.com", "date_range": [str(day.date())] * 2, **kw})
        assert status == 200, (kw, got)
        return got

    all_metrics = ["visitors", "pageviews", "events", "visits", "bounce_rate", "visit_duration", "views_per_visit"]
    top = ask(metrics=all_metrics)["results"]
    assert top == [{"dimensions": [], "metrics": figures(visits, all_metrics, today)}]
    bounce_rate, duration, per_visit = top[0]["metrics"][4:]
    assert 0 < bounce_rate < 100 and duration > 60 and 1 < per_visit < 3  # the script has bounces and long visits
    assert ask(metrics=["visitors", "pageviews", "events"])["results"][0]["metrics"] == top[0]["metrics"][:3]

    check_breakdowns(ask, visits, today)
    check_filters(ask, visits, today)
    check_time_and_comparisons(ask, s, key, day, every)
    check_refusals(s, key, day)


def check_breakdowns(ask, visits: list[Visit], today: list[dict]) -> None:
    session = ["visits", "bounce_rate", "visit_duration", "views_per_visit"]
    got = ask(metrics=["visitors", "pageviews", *session], dimensions=["visit:country"])["results"]
    assert by_value(got) == grouped(visits, lambda v: v.country, ["visitors", "pageviews", *session], today,
                                    lambda b: b["country"] or "(not set)")
    assert [r["metrics"][0] for r in got] == sorted((r["metrics"][0] for r in got), reverse=True)
    # A visit's source is its entry's; an event's is its own (later pageviews: Direct / None).
    got = ask(metrics=["visitors", "visits", "bounce_rate"], dimensions=["visit:source"])["results"]
    assert by_value(got) == grouped(visits, lambda v: v.source, ["visitors", "visits", "bounce_rate"], today,
                                    lambda b: b["source"])
    got = ask(metrics=["visits", "visit_duration"], dimensions=["visit:browser", "visit:country"])["results"]
    assert by_value(got) == grouped(visits, lambda v: (v.browser, v.country), ["visits", "visit_duration"])
    # Entry and exit pages read the visits only: visitors, pageviews, events of those visits.
    entry = ["visitors", "visits", "pageviews", "events", "bounce_rate", "percentage"]
    got = ask(metrics=entry, dimensions=["visit:entry_page"], order_by=[["visits", "desc"]])["results"]
    want = grouped(visits, lambda v: v.entry, entry[:-1])
    visitors = len({b["visitor"] for b in today})
    assert by_value(got) == {k: [*m, round(m[0] / visitors * 100, 1)] for k, m in want.items()}
    assert [r["metrics"][1] for r in got] == sorted((r["metrics"][1] for r in got), reverse=True)
    got = ask(metrics=["visits", "visit_duration"], dimensions=["visit:exit_page"], include={"total_rows": True},
              pagination={"limit": 2})
    want = grouped(visits, lambda v: v.exit, ["visits", "visit_duration"])
    assert got["meta"]["total_rows"] == len(want) and len(got["results"]) == 2
    assert all(want[r["dimensions"][0]] == r["metrics"] for r in got["results"])


def check_filters(ask, visits: list[Visit], today: list[dict]) -> None:
    metrics = ["visitors", "visits", "bounce_rate", "visit_duration", "views_per_visit"]

    def top(filters) -> list:
        return ask(metrics=metrics, filters=filters)["results"][0]["metrics"]

    def events_where(test) -> list[dict]:
        return [b for b in today if test(b)]

    assert top([["is", "visit:country", ["GB", "SE"]]]) == figures(
        [v for v in visits if v.country in ("GB", "SE")], metrics, events_where(lambda b: b["country"] in ("GB", "SE")))
    assert top([["is_not", "visit:browser", ["Safari"]], ["is", "visit:source", ["google"], {"case_sensitive": False}]]) \
        == figures([v for v in visits if v.browser != "Safari" and v.source == "Google"], metrics,
                   events_where(lambda b: b["browser"] != "Safari" and b["source"] == "Google"))
    # An entry or exit page filter selects visits: every figure is of those visits.
    assert top([["is", "visit:entry_page", ["/"]]]) == figures([v for v in visits if v.entry == "/"], metrics)
    assert top([["or", [["contains", "visit:exit_page", ["pric"]], ["matches", "visit:entry_page", ["^/blog/"]]]]]) \
        == figures([v for v in visits if "pric" in v.exit or v.entry.startswith("/blog/")], metrics)
    assert top([["not", ["is", "visit:country", ["(not set)"]]], ["is", "visit:exit_page", ["/"]]]) == figures(
        [v for v in visits if v.country != "(not set)" and v.exit == "/"], metrics)


def check_time_and_comparisons(ask, s, key: str, day: datetime, every: list[Visit]) -> None:
    # A visit counts in the hour its session started.
    got = ask(metrics=["visits", "bounce_rate"], dimensions=["time:hour"])["results"]
    visits = [v for v in every if v.start.date() == day.date()]
    assert by_value(got) == grouped(visits, lambda v: v.start.strftime("%Y-%m-%d %H:00:00"), ["visits", "bounce_rate"])
    status, got = api(s, key, {"site_id": "example.com", "metrics": ["visits", "views_per_visit"],
                               "date_range": [str((day - timedelta(days=1)).date()), str(day.date())],
                               "dimensions": ["time:day"]})
    assert status == 200 and by_value(got["results"]) == grouped(every, lambda v: str(v.start.date()),
                                                                 ["visits", "views_per_visit"])
    # Plausible's comparisons: bounce_rate changes in points, the others in percent.
    got = ask(metrics=["visits", "bounce_rate", "visit_duration"], include={"comparisons": {"mode": "previous_period"}})
    before = [v for v in every if v.start.date() < day.date()]
    now, then = figures(visits, ["visits", "bounce_rate", "visit_duration"]), figures(
        before, ["visits", "bounce_rate", "visit_duration"])
    assert got["results"][0]["metrics"] == now and got["results"][0]["comparison"]["metrics"] == then
    assert got["results"][0]["comparison"]["change"] == [
        round((now[0] - then[0]) / then[0] * 100), now[1] - then[1], round((now[2] - then[2]) / then[2] * 100)]


def check_refusals(s, key: str, day: datetime) -> None:
    ask = {"site_id": "example.com", "date_range": [str(day.date())] * 2}
    for bad, message in [
        ({"metrics": ["visitors", "bounce_rate"], "dimensions": ["event:page"]},
         "#/metrics/1: Metric `bounce_rate` cannot be queried with the dimension `event:page`"),
        ({"metrics": ["visit_duration"], "filters": [["is", "event:name", ["signup"]]]},
         "#/metrics/0: Metric `visit_duration` cannot be queried with a filter on `event:name`"),
        ({"metrics": ["visitors"], "dimensions": ["visit:entry_page"], "filters": [["is", "event:page", ["/"]]]},
         "#/filters/0: `event:page` cannot be combined with `visit:entry_page`"),
        ({"metrics": ["visitors"], "dimensions": ["visit:country_name"]}, "#/dimensions/0"),
    ]:
        status, err = api(s, key, {**ask, **bad})
        assert status == 400 and message in err["error"], (bad, status, err)
    status, got = api(s, key, {**ask, "metrics": ["visits"]})
    assert status == 200 and got["results"][0]["metrics"] == [15]
