"""Plausible's engagement events and custom properties on the real stack: Plausible-shaped
bodies (what `@plausible-analytics/tracker` sends to `/api/event`), and one visitor in
tally.js's shape (`data-engagement`, on `/api/v1/collect`), through the real collector,
broker, stream worker and sink into chDB, then `tally dashboard` answering.

Expected figures are recomputed here from the bodies sent: engagement events count as no
event, pageview or visitor, and give `time_on_page` (engaged seconds per page visit) and
`scroll_depth` (the mean of each visitor's deepest scroll on the page)."""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import UTC, datetime

import pytest
from tally.ops.stack import http_ok

from tests.conftest import start_pipeline, wait_for
from tests.helpers import post_json, query_rows
from tests.test_api import UAS, api, new_key, reconciled

pytestmark = pytest.mark.integration

URL = "https://example.com"
# Per visitor: (page, sd, e) engagement events after a pageview of the page, and custom events.
VISITORS = [
    {"pages": [("/blog/a", 40, 12_000), ("/blog/a", 75, 3_000)], "events": [("Signup", "ann")]},
    {"pages": [("/blog/a", 100, 61_000), ("/pricing", 20, 4_500)], "events": []},
    {"pages": [("/blog/a", 250, None)], "events": [("Signup", "bob"), ("Download", None)]},  # sd clamped to 100
    {"pages": [("/pricing", None, 5 * 3600_000)], "events": []},  # e clamped to 30 minutes
    {"pages": [("/pricing", 0, 0)], "events": [("Signup", "ann")]},
    {"pages": [("/docs", None, None)], "events": []},  # a pageview without engagement
]
# One more visitor with tally.js and data-engagement: Tally's own shape on /api/v1/collect,
# exactly what tally.js sends (docs/tracker.md).
TALLY_JS_PAGES = [("/guide", 60, 8_000), ("/guide", 100, 4_000)]


def h(v: int) -> dict[str, str]:
    return {"User-Agent": UAS[v % len(UAS)][0], "X-Forwarded-For": f"203.0.113.{40 + v}"}


def send(collector: str) -> tuple[list[dict], list[tuple[int, str, int | None, int | None]]]:
    """Post every visitor's pageviews, engagement and custom events. Returns the counted
    events as {visitor, name, page, author} and the engagement events as (visitor, page, sd, e),
    both as Tally must read them."""
    counted, engaged = [], []

    def post(v: int, body: dict, want: int = 202) -> None:
        status, resp, _ = post_json(f"{collector}/api/event", {"d": "example.com", **body}, headers=h(v))
        assert status == want, (body, status, resp)

    def tally_js(v: int, page: str, event: str, **figures: int) -> None:
        body = {"site": "example.com", "path": page, "referrer": None, "event": event, "props": {}, **figures}
        status, resp, _ = post_json(f"{collector}/api/v1/collect", body, headers=h(v))
        assert status == 204, (body, status, resp)

    for v, plan in enumerate(VISITORS):
        seen = []
        for page, sd, e in plan["pages"]:
            if page not in seen:
                seen.append(page)
                post(v, {"n": "pageview", "u": URL + page, "r": "https://www.google.com/"})
                counted.append({"visitor": v, "name": "pageview", "page": page, "author": None})
            if sd is None and e is None:
                continue
            body = {"n": "engagement", "u": URL + page, "p": {"author": "ann"}}
            body.update({k: x for k, x in (("sd", sd), ("e", e)) if x is not None})
            post(v, body)
            engaged.append((v, page, None if sd is None else min(sd, 100), None if e is None else min(e, 1_800_000)))
        for name, author in plan["events"]:
            post(v, {"n": name, "u": URL + "/signup", **({"p": json.dumps({"author": author})} if author else {})})
            counted.append({"visitor": v, "name": name, "page": "/signup", "author": author})
    # Refused, by name: an engagement event without figures; a beacon setting a reserved prop.
    post(0, {"n": "engagement", "u": URL + "/blog/a", "sd": "deep", "e": -5}, 400)
    post(0, {"n": "Signup", "u": URL + "/", "p": {"tally:engaged_ms": "9"}}, 400)
    v = len(VISITORS)
    tally_js(v, TALLY_JS_PAGES[0][0], "pageview")
    counted.append({"visitor": v, "name": "pageview", "page": TALLY_JS_PAGES[0][0], "author": None})
    for page, sd, e in TALLY_JS_PAGES:
        tally_js(v, page, "engagement", sd=sd, e=e)
        engaged.append((v, page, sd, e))
    return counted, engaged


def half_up(num: int, den: int) -> int:
    return (2 * num + den) // (2 * den)


def engagement_by_page(engaged: list[tuple]) -> dict[str, list]:
    """page -> [time_on_page, scroll_depth]: one visit per visitor here (seconds apart)."""
    ms: dict[str, int] = defaultdict(int)
    visits: dict[str, set] = defaultdict(set)
    deepest: dict[tuple, int] = {}
    for v, page, sd, e in engaged:
        ms[page] += e or 0
        visits[page].add(v)
        if sd is not None:
            deepest[(v, page)] = max(sd, deepest.get((v, page), 0))
    out = {}
    for page in visits:
        depths = [d for (_, p), d in deepest.items() if p == page]
        out[page] = [half_up(ms[page], 1000 * len(visits[page])), half_up(sum(depths), len(depths)) if depths else None]
    return out


def test_engagement_events_give_time_on_page_and_scroll_depth_and_count_as_no_event(tally_env, spawn):
    tally_env.vars.update({"TALLY_TRUSTED_PROXIES": "127.0.0.1/32", "TALLY_API_RATE_LIMIT_BURST": "1000",
                           "TALLY_PROPS_ALLOWLIST": "example.com:author"})
    s = tally_env.settings
    start_pipeline(tally_env, spawn)
    dashboard = spawn(tally_env, "dashboard")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.dashboard_port}/healthz"), 30, "dashboard")
    counted, engaged = send(f"http://{s.collector_host}:{s.collector_port}")
    stored = len(counted) + len(engaged)
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL")[0][0] == stored, 120, "every event stored")
    # The figures are kept as reserved props of the raw rows.
    rows = query_rows(s, "SELECT path, props['tally:scroll_depth'], props['tally:engaged_ms'] FROM pageviews FINAL "
                         "WHERE event = 'engagement' ORDER BY path, toUInt64OrZero(props['tally:engaged_ms'])")
    assert sorted(rows) == sorted([p, "" if sd is None else str(sd), "" if e is None else str(e)]
                                  for _, p, sd, e in engaged)
    # One visit per visitor; its events are the counted ones only (engagement keeps no visit from bouncing).
    per_visitor = defaultdict(lambda: [0, 0])
    for c in counted:
        per_visitor[c["visitor"]][0] += c["name"] == "pageview"
        per_visitor[c["visitor"]][1] += 1
    want_visits = sorted([pv, ev] for pv, ev in per_visitor.values())
    wait_for(lambda: sorted([int(a), int(b)] for a, b in query_rows(
        s, "SELECT pageviews, events FROM sessions FINAL WHERE deleted = 0")) == want_visits, 120, "the visits")

    key = new_key(tally_env, "--site", "example.com")

    def ask(**kw) -> dict:
        status, got = api(s, key, {"site_id": "example.com", "date_range": "day", **kw})
        assert status == 200, (kw, got)
        return got

    def rows_of(got: dict) -> dict:
        return {r["dimensions"][0] if r["dimensions"] else None: r["metrics"] for r in got["results"]}

    pageviews = sum(c["name"] == "pageview" for c in counted)
    bounces = sum(1 for pv, ev in want_visits if pv == 1 and ev == 1)
    top = ask(metrics=["visitors", "pageviews", "events", "visits", "bounce_rate"])["results"][0]["metrics"]
    visitors = len(per_visitor)
    assert top == [visitors, pageviews, len(counted), visitors, half_up(100 * bounces, visitors)]
    names = rows_of(ask(metrics=["visitors", "events"], dimensions=["event:name"]))
    assert "engagement" not in names and sum(m[1] for m in names.values()) == len(counted)
    today = datetime.now(UTC).date().isoformat()
    rec = reconciled(tally_env, "--from", today, "--to", today)
    assert rec["drift"] == [], rec

    # Time on page and scroll depth per page, beside the event metrics of the same pages.
    want = engagement_by_page(engaged)
    got = rows_of(ask(metrics=["visitors", "pageviews", "time_on_page", "scroll_depth"], dimensions=["event:page"]))
    for page, (visitors, views, seconds, depth) in got.items():
        events = [c for c in counted if c["page"] == page]
        assert [visitors, views] == [len({c["visitor"] for c in events}), sum(c["name"] == "pageview" for c in events)]
        assert [seconds, depth] == want.get(page, [None, None]), page
    assert set(got) == {c["page"] for c in counted}
    assert got["/blog/a"][2:] == [25, 92] and got["/docs"][2:] == [None, None]  # (15+61+0 s)/3, (75+100+100)/3
    assert got["/guide"][2:] == [12, 100]  # tally.js's: 8+4 s in one page visit, the deepest scroll
    deepest: dict[tuple, int] = {}
    for v, page, sd, _ in engaged:
        if sd is not None:
            deepest[(v, page)] = max(sd, deepest.get((v, page), 0))
    everywhere = [half_up(sum(e or 0 for *_, e in engaged), 1000 * len({(v, page) for v, page, *_ in engaged})),
                  half_up(sum(deepest.values()), len(deepest))]
    assert ask(metrics=["time_on_page", "scroll_depth"])["results"][0]["metrics"] == everywhere
    blog = ask(metrics=["time_on_page"], filters=[["contains", "event:page", ["/blog"]]])["results"][0]["metrics"]
    assert blog == [want["/blog/a"][0]]

    # Custom properties: a breakdown of the counted events by a prop, `(none)` without it.
    authors: dict[str, list] = defaultdict(lambda: [set(), 0])
    for c in counted:
        authors[c["author"] or "(none)"][0].add(c["visitor"])
        authors[c["author"] or "(none)"][1] += 1
    got = rows_of(ask(metrics=["visitors", "events"], dimensions=["event:props:author"]))
    assert got == {a: [len(vs), n] for a, (vs, n) in authors.items()}
    got = ask(metrics=["events"], dimensions=["event:name"], filters=[["is", "event:props:author", ["ann"]]])
    assert rows_of(got) == {"Signup": [sum(c["author"] == "ann" for c in counted)]}
    status, err = api(s, key, {"site_id": "example.com", "date_range": "day", "metrics": ["scroll_depth"],
                               "dimensions": ["event:name"]})
    assert status == 400 and "Metric `scroll_depth` cannot be queried with the dimension `event:name`" in err["error"]
    assert dashboard.alive(), dashboard.output()[-2000:]
