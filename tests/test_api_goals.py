"""Goals on the real stack: scripted beacons through the real broker, the stream worker and
the sink into chDB; goals added, listed and removed with `tally goals` through the sink's
socket; then `tally dashboard` answering `event:goal` and `conversion_rate`.

Expected figures are recomputed here from the beacons sent, with this file's own reading
of each goal (hand-written tests on the path, not the code's pattern translation): unique
converting visitors (a visitor is one per day: the daily salt), conversions, and the
conversion rate over the visitors of the whole query (every time bucket and value of
another dimension together) without its goal filter, in percent with one decimal rounded
half up, as Plausible's `conversion_rate`."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import datetime, timedelta

import pytest
from tally.sinks.goalstore import new_goal
from tally.sinks.query import SinkSocket

from tests.conftest import wait_for
from tests.helpers import query_rows
from tests.stream_support import CHROME, FIREFOX, IPHONE, beacon
from tests.test_api import api, new_key, tally
from tests.test_api_visits import by_value, start_scripted

pytestmark = pytest.mark.integration

BROWSERS = [(FIREFOX, "Firefox"), (CHROME, "Chrome"), (IPHONE, "Safari")]
# Each goal as this test reads it: does a beacon convert it?
GOALS: dict[str, Callable[[dict], bool]] = {
    "signup": lambda b: b["event"] == "signup",
    "Visit /blog/*": lambda b: b["event"] == "pageview" and b["path"].startswith("/blog/") and "/" not in b["path"][6:],
    "Blog, all": lambda b: b["event"] == "pageview" and b["path"].startswith("/blog/"),
}


def script(day: datetime) -> list[dict]:
    """12 visitors on `day` and 4 the day before on example.com, 2 on other.com."""
    out = []

    def hit(site: str, who: str, ua: int, at: datetime, path: str, event: str = "pageview") -> None:
        out.append({**beacon(site=site, path=path, ua=BROWSERS[ua][0], ip=who, received_at=at, event=event),
                    "visitor": (site, at.date(), who, ua), "browser": BROWSERS[ua][1]})

    for v in range(12):
        t = day + timedelta(hours=9, minutes=5 * v)
        who, ua = f"ip-{v}", v % 3
        hit("example.com", who, ua, t, "/")
        if v % 2 == 0:
            hit("example.com", who, ua, t + timedelta(minutes=1), "/blog/a")
        if v % 3 == 0:
            hit("example.com", who, ua, t + timedelta(minutes=2), "/blog/a/comments")  # /blog/** only
        if v % 4 == 0:
            hit("example.com", who, ua, t + timedelta(minutes=3), "/blog")  # neither
        if v % 5 in (0, 1):
            hit("example.com", who, ua, t + timedelta(minutes=4), "/pricing", "signup")
        if v == 0:
            hit("example.com", who, ua, t + timedelta(minutes=5), "/pricing", "signup")  # twice: one unique
        if v % 6 == 1:
            hit("example.com", who, ua, t + timedelta(minutes=6), "/checkout", "purchase")
        if v == 7:
            hit("example.com", who, ua, t + timedelta(minutes=7), "/blog/z", "download")  # not a pageview
    before = day - timedelta(days=1)
    for v in range(4):
        t = before + timedelta(hours=15, minutes=3 * v)
        hit("example.com", f"ip-b{v}", v % 3, t, "/blog/c")
        if v < 1:
            hit("example.com", f"ip-b{v}", v % 3, t + timedelta(minutes=1), "/pricing", "signup")
    for v in range(2):
        hit("other.com", f"ip-{v}", 0, day + timedelta(hours=10, minutes=v), "/pricing", "signup")
    return out


def rate(converted: int, total: int) -> float:
    return (2000 * converted + total) // (2 * total) / 10 if total else 0.0


def expected(beacons: list[dict], goals: list[str], metrics: list[str], total: list[dict] | None = None) -> dict:
    """Goal name -> metrics, for the goals with a conversion; `total`: the denominator's beacons."""
    visitors = len({b["visitor"] for b in (beacons if total is None else total)})
    out = {}
    for name in goals:
        hits = [b for b in beacons if GOALS[name](b)]
        if hits:
            figures = {"visitors": len({b["visitor"] for b in hits}), "events": len(hits),
                       "pageviews": sum(b["event"] == "pageview" for b in hits)}
            figures["conversion_rate"] = rate(figures["visitors"], visitors)
            out[name] = [figures[m] for m in metrics]
    return out


def test_goals_conversions_and_conversion_rate_equal_the_beacons_sent(tally_env, spawn):
    day, beacons = start_scripted(tally_env, spawn, script)
    s = tally_env.settings
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL")[0][0] == len(beacons), 120, "every beacon")

    ids = manage_goals(tally_env)
    key = new_key(tally_env, "--site", "example.com", "--site", "other.com")
    site = [b for b in beacons if b["visitor"][0] == "example.com"]
    today = [b for b in site if b["received_at"].date() == day.date()]

    def ask(**kw) -> dict:
        status, got = api(s, key, {"site_id": "example.com", "date_range": [str(day.date())] * 2, **kw})
        assert status == 200, (kw, got)
        return got

    names = list(GOALS)
    metrics = ["visitors", "events", "conversion_rate", "pageviews"]
    got = ask(metrics=metrics, dimensions=["event:goal"])["results"]
    assert by_value(got) == expected(today, names, metrics)
    assert set(by_value(got)) == set(names)  # the removed goal (purchase) is gone; other.com's is not here
    assert [r["metrics"][0] for r in got] == sorted((r["metrics"][0] for r in got), reverse=True)
    signup = by_value(got)["signup"]
    assert signup[:2] == [6, 7] and signup[2] == 50.0  # a visitor who signed up twice counts once

    # a goal filter: the converting rows only; the rate over all of the day's visitors
    got = ask(metrics=metrics, filters=[["is", "event:goal", ["Visit /blog/*"]]])["results"]
    assert got == [{"dimensions": [], "metrics": expected(today, ["Visit /blog/*"], metrics)["Visit /blog/*"]}]
    # another dimension under a goal filter: Plausible's conversion_rate is over the whole set
    got = ask(metrics=["visitors", "conversion_rate"], dimensions=["visit:browser"],
              filters=[["is", "event:goal", ["Blog, all"]]])["results"]
    want = {browser: [len({b["visitor"] for b in today if GOALS["Blog, all"](b) and b["browser"] == browser}),
                      rate(len({b["visitor"] for b in today if GOALS["Blog, all"](b) and b["browser"] == browser}),
                           len({b["visitor"] for b in today}))]
            for browser in {b["browser"] for b in today if GOALS["Blog, all"](b)}}
    assert by_value(got) == want
    # goal and non-goal filters together: the denominator keeps the browser filter
    firefox = [b for b in today if b["browser"] == "Firefox"]
    got = ask(metrics=["visitors", "events", "conversion_rate"], dimensions=["event:goal"],
              filters=[["is", "visit:browser", ["Firefox"]], ["contains", "event:goal", ["blog"], {"case_sensitive": False}]])
    assert by_value(got["results"]) == expected(firefox, ["Visit /blog/*", "Blog, all"],
                                                ["visitors", "events", "conversion_rate"])
    # percentage under a goal dimension: over all visitors too; under a goal filter: over the converting ones
    got = ask(metrics=["visitors", "percentage"], dimensions=["event:goal"])["results"]
    assert by_value(got)["signup"] == [6, 50.0]
    got = ask(metrics=["visitors", "percentage", "conversion_rate"], dimensions=["visit:browser"],
              filters=[["is", "event:goal", ["signup"]]])["results"]
    signups = [b for b in today if b["event"] == "signup"]
    assert by_value(got) == {browser: [n, round(n / 6 * 100, 1), rate(n, 12)] for browser in {b["browser"] for b in signups}
                             if (n := len({b["visitor"] for b in signups if b["browser"] == browser}))}

    check_time_and_comparisons(ask, s, key, day, site)
    check_refusals(s, key, day)
    # other.com's goal counts other.com's signups only
    status, got = api(s, key, {"site_id": "other.com", "date_range": [str(day.date())] * 2,
                               "metrics": ["visitors", "events", "conversion_rate"], "dimensions": ["event:goal"]})
    assert status == 200 and by_value(got["results"]) == {"Other signup": [2, 2, 100.0]}
    # analysts may read the goals; removing one takes it out of the API at once
    assert sorted(r[0] for r in query_rows(s, "SELECT name FROM goals FINAL WHERE deleted_at IS NULL")) == \
        sorted([*names, "Other signup"])
    assert tally(tally_env, "goals", "remove", ids["signup"]).returncode == 0
    got = ask(metrics=["visitors"], dimensions=["event:goal"])["results"]
    assert set(by_value(got)) == {"Visit /blog/*", "Blog, all"}


def manage_goals(env) -> dict[str, str]:
    """`tally goals add|list|remove` through the running sink; bad options are refused
    naming the option. The goal ids by name."""
    def add(*args: str) -> str:
        out = tally(env, "goals", "add", *args)
        assert out.returncode == 0, out.stderr
        return out.stdout.strip().splitlines()[-1]

    ids = {"signup": add("--site", "example.com", "--event", "signup"),
           "Visit /blog/*": add("--site", "example.com", "--page", "/blog/*"),
           "Blog, all": add("--site", "example.com", "--page", "/blog/**", "--name", "Blog, all"),
           "Other signup": add("--site", "other.com", "--event", "signup", "--name", "Other signup")}
    purchase = add("--site", "example.com", "--event", "purchase")
    for args, message in [
        (("--site", "example.com", "--event", "pageview"), "--event: `pageview` cannot be a goal"),
        (("--site", "example.com", "--page", "blog"), "--page: a page pattern starts with /"),
        (("--site", "example.com", "--event", "signup", "--page", "/x"), "exactly one of --event NAME or --page PATTERN"),
        (("--site", "example.com", "--event", "buy", "--name", "signup"),
         "--name: example.com already has a goal named 'signup'"),
        (("--site", "example.com", "--page", "/blog/*", "--name", "Blog posts"), "--page: example.com already has this goal"),
    ]:
        out = tally(env, "goals", "add", *args)
        assert out.returncode != 0 and message in out.stderr, (args, out.stderr)
    # the sink's socket checks a record itself (a client other than the CLI): 400 naming the field
    sock = SinkSocket(env.settings.socket_path)
    status, body = sock.request("POST", "/v1/goals", {**new_goal("example.com", "buy", None).to_json(), "goal_id": "x"})
    assert status == 400 and json.loads(body)["error"].startswith("goal_id:")
    status, body = sock.request("POST", "/v1/goals", {"site": "example.com"})
    assert status == 400 and "bad goal record" in json.loads(body)["error"]
    assert tally(env, "goals", "remove", purchase).returncode == 0
    out = tally(env, "goals", "remove", purchase)  # already gone
    assert out.returncode == 1 and f"no goal {purchase}" in out.stderr
    listed = json.loads(tally(env, "goals", "list", "--site", "example.com", "--json").stdout)
    assert [(g["goal_id"], g["name"], g["kind"], g["value"]) for g in listed] == [
        (ids["signup"], "signup", "event", "signup"), (ids["Visit /blog/*"], "Visit /blog/*", "page", "/blog/*"),
        (ids["Blog, all"], "Blog, all", "page", "/blog/**")]
    assert len(json.loads(tally(env, "goals", "list", "--json").stdout)) == 4
    return ids


def check_time_and_comparisons(ask, s, key: str, day: datetime, site: list[dict]) -> None:
    before = day - timedelta(days=1)
    days = {d: [b for b in site if b["received_at"].date() == d] for d in (before.date(), day.date())}
    status, got = api(s, key, {"site_id": "example.com", "metrics": ["visitors", "conversion_rate"],
                               "date_range": [str(before.date()), str(day.date())],
                               "dimensions": ["time:day", "event:goal"], "filters": [["is", "event:goal", ["signup"]]]})
    assert status == 200, got
    both = days[before.date()] + days[day.date()]  # the denominator: the whole range's visitors
    assert by_value(got["results"]) == {(str(d), "signup"): expected(bs, ["signup"], ["visitors", "conversion_rate"], both)["signup"]
                                        for d, bs in days.items()}
    # comparisons: the same goals the day before; conversion_rate changes in points
    got = ask(metrics=["visitors", "conversion_rate"], dimensions=["event:goal"],
              include={"comparisons": {"mode": "previous_period"}})["results"]
    then = expected(days[before.date()], list(GOALS), ["visitors", "conversion_rate"])
    for r in got:
        old = then.get(r["dimensions"][0], [0, 0.0])
        assert r["comparison"]["metrics"] == old, r
        assert r["comparison"]["change"][1] == round(r["metrics"][1] - old[1], 1), r


def check_refusals(s, key: str, day: datetime) -> None:
    ask = {"site_id": "example.com", "date_range": [str(day.date())] * 2}
    for bad, message in [
        ({"metrics": ["conversion_rate"]}, "Metric `conversion_rate` can only be queried with event:goal filters or dimensions."),
        ({"metrics": ["visitors"], "filters": [["is", "event:goal", ["Purchase"]]]},
         "#/filters/0: Invalid filters. The goal `Purchase` is not configured for this site"),
        ({"metrics": ["visits"], "dimensions": ["event:goal"]},
         "#/metrics/0: Metric `visits` cannot be queried with the dimension `event:goal`"),
        ({"metrics": ["visitors"], "filters": [["not", ["is", "event:goal", ["signup"]]]]},
         "Dimension `event:goal` can only be filtered at the top level."),
    ]:
        status, err = api(s, key, {**ask, **bad})
        assert status == 400 and message in err["error"], (bad, status, err)
