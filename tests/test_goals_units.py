"""Goals' pure parts: a page pattern's meaning (`*` within a segment, `**` across), the
checks of `tally goals add` (each error names its option), the Stats API's validation of
`event:goal` and `conversion_rate` (Plausible's messages), and the SQL: raw rows only,
every goal a parameter, conversion_rate's denominator without goal filters. The queries run on the real
stack in test_api_goals.py."""

from __future__ import annotations

import re
from dataclasses import replace
from datetime import date

import pytest
from tally.api.goals import Goals, check_configured, page_regex, without_goals
from tally.api.request import Branch, Leaf, RequestError, parse_request
from tally.api.runner import change, conversion_rate
from tally.api.sql import Builder
from tally.sinks.goalstore import new_goal, problem

TODAY = date(2021, 1, 14)


def body(**kw):
    return {"site_id": "example.com", "metrics": ["visitors"], "date_range": "7d", **kw}


@pytest.mark.parametrize("pattern, matches, misses", [
    ("/blog/*", ["/blog/a", "/blog/", "/blog/a-b.html"], ["/blog", "/blog/a/b", "/blogs/a", "/x/blog/a"]),
    ("/blog/**", ["/blog/a", "/blog/a/b/c", "/blog/"], ["/blog", "/blogs/a"]),
    ("/blog*", ["/blog", "/blogs", "/blog-post"], ["/blog/a"]),
    ("/blog**", ["/blog", "/blog/a/b"], ["/blo"]),
    ("/docs/*/install", ["/docs/v1/install"], ["/docs/v1/x/install", "/docs/install"]),
    ("/a.b(c)+[d]?$^|{e}\\", ["/a.b(c)+[d]?$^|{e}\\"], ["/aXb(c)+[d]?$^|{e}\\", "/a.b(c)+[d]"]),
    ("/", ["/"], ["/a", ""]),
    ("**", ["/", "/anything/at/all"], []),
])
def test_page_patterns_match_whole_paths(pattern, matches, misses):
    rx = re.compile(page_regex(pattern))
    assert all(rx.search(p) for p in matches), pattern
    assert not any(rx.search(p) for p in misses), pattern


@pytest.mark.parametrize("args, message", [
    (("", "signup", None), "--site:"),
    (("a b.com", "signup", None), "--site:"),
    (("example.com", "pageview", None), "--event: `pageview` cannot be a goal"),
    (("example.com", "engagement", None), "--event: `engagement` cannot be a goal"),
    (("example.com", " signup", None), "--event:"),
    (("example.com", "x" * 121, None), "--event:"),
    (("example.com", "sign\nup", None), "--event:"),
    (("example.com", None, "blog/*"), "--page: a page pattern starts with /"),
    (("example.com", None, "/search?q=*"), "--page: a page pattern is a path: without ? or #"),
    (("example.com", None, "/a b"), "--page:"),
    (("example.com", None, "/" + "a" * 500), "--page:"),
])
def test_a_bad_goal_is_refused_naming_the_option(args, message):
    why = problem(new_goal(*args))
    assert why is not None and why.startswith(message), why


def test_goals_get_plausibles_default_names():
    assert new_goal("example.com", "Signup", None).name == "Signup"
    page = new_goal("example.com", None, "/blog/**")
    assert (page.kind, page.value, page.name) == ("page", "/blog/**", "Visit /blog/**")
    assert problem(page) is None and problem(new_goal("example.com", "Signup", None, "Sign-ups")) is None
    assert problem(new_goal("example.com", "Signup", None, "")).startswith("--name:")
    assert re.fullmatch(r"[0-9a-f]{12}", page.goal_id)


@pytest.mark.parametrize("b, message", [
    (body(metrics=["conversion_rate"]),
     "#/metrics/0: Metric `conversion_rate` can only be queried with event:goal filters or dimensions."),
    (body(metrics=["visitors", "conversion_rate"], dimensions=["event:page"]),
     "#/metrics/1: Metric `conversion_rate` can only be queried"),
    (body(filters=[["or", [["is", "event:goal", ["Signup"]], ["is", "event:page", ["/"]]]]]),
     "Dimension `event:goal` can only be filtered at the top level."),
    (body(filters=[["is_not", "event:goal", ["Signup"]]]), "#/filters/0: Filter operator `is_not` is not supported on `event:goal`"),
    (body(metrics=["visits"], dimensions=["event:goal"]),
     "#/metrics/0: Metric `visits` cannot be queried with the dimension `event:goal` (#/dimensions/0)"),
    (body(metrics=["bounce_rate"], filters=[["is", "event:goal", ["Signup"]]]),
     "Metric `bounce_rate` cannot be queried with a filter on `event:goal`"),
    (body(dimensions=["event:goal", "visit:entry_page"]), "`event:goal` cannot be combined with `visit:entry_page`"),
])
def test_goal_queries_are_validated_like_plausible(b, message):
    with pytest.raises(RequestError) as info:
        parse_request(b, TODAY)
    assert message in str(info.value)


GOALS = Goals.of([["Signup", "event", "signup"], ["Visit /blog/*", "page", "/blog/*"]])


def test_goal_filters_name_configured_goals():
    q = parse_request(body(metrics=["conversion_rate"], filters=[["is", "visit:country", ["SE"]],
                                                                 ["is", "event:goal", ["Signup", "Purchase"]]]), TODAY)
    with pytest.raises(RequestError) as info:
        check_configured(q.filters, GOALS)
    assert str(info.value).startswith("#/filters/1: Invalid filters. The goal `Purchase` is not configured for this site")
    check_configured(parse_request(body(filters=[["contains", "event:goal", ["Purch"]]]), TODAY).filters, GOALS)
    check_configured(parse_request(body(filters=[["is", "event:goal", ["signup"], {"case_sensitive": False}]]),
                                   TODAY).filters, GOALS)


def test_goal_queries_read_raw_rows_with_every_goal_a_parameter():
    q = parse_request(body(metrics=["visitors", "events", "conversion_rate"], dimensions=["event:goal"],
                           filters=[["contains", "event:goal", ["Visit"]], ["is", "visit:device", ["Mobile"]]]), TODAY)
    sql = Builder(q, kept=TODAY, goals=GOALS).build(q.range)
    assert "FROM pageviews FINAL" in sql.text and "arrayJoin" in sql.text
    assert "/blog" not in sql.text and "signup" not in sql.text.lower()
    assert ["Signup", "Visit /blog/*"] in sql.params.values() and ["signup", ""] in sql.params.values()
    assert ["", "^/blog/[^/]*$"] in sql.params.values() and ["Visit"] in sql.params.values()
    assert sql.metrics == ("visitors", "events")  # conversion_rate: from visitors and the totals
    # the text depends on the query's shape only: other goals, the same text
    other = Builder(q, kept=TODAY, goals=Goals.of([["A", "page", "/x/**"]])).build(q.range)
    assert other.text == sql.text and other.params != sql.params
    # conversion_rate's denominator: the same filters without the goal's, so the aggregates or
    # rollups may answer; percentage's keeps them (Plausible's)
    totals = Builder(q, kept=TODAY, goals=GOALS).build(q.range, totals=True, goal_filters=False)
    assert "arrayJoin" not in totals.text and ["Mobile"] in totals.params.values() and ["Visit"] not in totals.params.values()
    assert ["Visit"] in Builder(q, goals=GOALS).build(q.range, totals=True).params.values()
    bare = replace(q, filters=q.filters[:1])
    assert "aggregates FINAL" in Builder(bare, goals=GOALS).build(q.range, totals=True, goal_filters=False).text


def test_without_goals_keeps_a_superset():
    goal, page = Leaf("is", "event:goal", ("A",)), Leaf("is", "event:page", ("/",))
    assert without_goals(goal) is None and without_goals(page) == page
    assert without_goals(Branch("and", (goal, page))) == page
    assert without_goals(Branch("or", (goal, page))) is None  # a goal or a page: any row may be in it
    assert without_goals(Branch("or", (Branch("and", (goal, page)), Branch("and", (goal, page))))) == Branch("or", (page, page))


def test_conversion_rate_is_rounded_half_up_to_one_decimal():
    assert conversion_rate(1, 3) == 33.3 and conversion_rate(2, 3) == 66.7 and conversion_rate(1, 16) == 6.3
    assert conversion_rate(1, 80) == 1.3 and conversion_rate(0, 5) == 0.0 and conversion_rate(0, 0) == 0.0
    assert change("conversion_rate", 12.5, 33.33) == 20.8 and change("conversion_rate", 0.0, 5.0) == 5.0
