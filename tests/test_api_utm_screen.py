"""utm_content, utm_term and the screen width class, from a real browser to the Stats API:
headless Chromium runs tally.js (data-screen on some pages) at set window widths and user
agents, through the real collector, broker, stream worker and sink into chDB, and
`tally dashboard` answers visit:utm_content, visit:utm_term and visit:screen as
dimensions and filters. A pageview_batch record of the previous schema version (no
utm_content or utm_term) is stored next to them and answers as (not set).

Every expected figure is recomputed here from the scenario the browser played."""

from __future__ import annotations

import asyncio
import io
import shutil
import uuid
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import parse_qs, urlsplit

import aiohttp
import fastavro
import pytest
from tally.ops.stack import http_ok, worker_ready
from tally.schemas.codec import MAGIC, default_codec

from tests.conftest import wait_for
from tests.helpers import query_rows
from tests.stream_support import CHROME, FIREFOX, IPHONE, produce
from tests.test_api import api, new_key
from tests.test_tracker_browser import CDP, headless_chromium, new_tab, static_site

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed "
                                 "(infra/bootstrap.sh installs it)")]

SAFARI_MAC = ("Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) "
              "Version/17.5 Safari/605.1.15")
PAGE = """<!doctype html><html><head><title>utm</title>
<script defer data-site="example.com" {attrs} src="{collector}/js/tally.js"></script></head><body>hi</body></html>"""
# One visitor per user agent (same address): (user agent, window width, steps). A step is a
# page to open (path and query) or a custom event sent on the current page.
VISITORS = [
    (FIREFOX, 400, ["/promo/a.html?utm_source=ads&utm_content=banner&utm_term=snow%20boots", "/promo/b.html"]),
    (CHROME, 1200, ["/promo/a.html?utm_content=video&utm_term=boots", ("signup",)]),
    (IPHONE, 2000, ["/promo/b.html?utm_content=banner"]),
    (SAFARI_MAC, 1000, ["/plain/a.html?utm_content=banner&utm_term=snow%20boots"]),  # no data-screen
]
NOT_SET = "(not set)"


@dataclass
class Sent:
    visitor: int
    event: str
    path: str
    content: str
    term: str
    screen: str


def width_class(width: int) -> str:
    return "Mobile" if width < 576 else "Tablet" if width < 992 else "Laptop" if width < 1440 else "Desktop"


def sent() -> list[Sent]:
    """What the scenario sends, event by event, with each event's own values."""
    out, page = [], ""
    for i, (_, width, steps) in enumerate(VISITORS):
        for step in steps:
            page = step if isinstance(step, str) else page
            query = parse_qs(urlsplit(page).query)
            screen = width_class(width) if page.startswith("/promo/") else NOT_SET
            out.append(Sent(i, "pageview" if isinstance(step, str) else step[0], urlsplit(page).path,
                            query.get("utm_content", [NOT_SET])[0], query.get("utm_term", [NOT_SET])[0], screen))
    return out


def figures(events: list[Sent], test, metrics: list[str]) -> list:
    """The API's figures of what passes `test`: event metrics from the events that pass it,
    visit metrics from the visits whose entry pageview passes it (one visit per visitor)."""
    by_visitor: dict[int, list[Sent]] = defaultdict(list)
    for e in events:
        by_visitor[e.visitor].append(e)
    mine = [e for e in events if test(e)]
    visits = [v for v in by_visitor.values() if test(next(e for e in v if e.event == "pageview"))]
    bounces, n = sum(1 for v in visits if len(v) == 1), len(visits)
    out = {"visitors": len({e.visitor for e in mine}), "pageviews": sum(e.event == "pageview" for e in mine),
           "events": len(mine), "visits": n, "bounce_rate": (200 * bounces + n) // (2 * n) if n else 0}
    return [out[m] for m in metrics]


def expected(events: list[Sent], field: str, metrics: list[str]) -> dict[str, list]:
    """figures() per value of `field` (a breakdown)."""
    return {value: figures(events, lambda e, v=value: getattr(e, field) == v, metrics)
            for value in {getattr(e, field) for e in events}}


def by_value(results: list[dict]) -> dict:
    return {r["dimensions"][0]: r["metrics"] for r in results}


def old_version_record(site: str) -> tuple[bytes, str]:
    """A pageview_batch record in the previous schema version (v2: no utm_content, utm_term)."""
    codec = default_codec()
    v2 = next(v for v in codec.versions["pageview_batch"] if v.version == 2)
    assert {"utm_content", "utm_term"}.isdisjoint(
        f["name"] for f in v2.raw["fields"][2]["type"]["items"]["fields"])
    event_id = str(uuid.uuid4())
    item = {"event_id": event_id, "received_at": datetime.now(UTC), "site": site, "hostname": site,
            "path": "/legacy", "event": "pageview", "visitor_id": 424242, "referrer_host": "",
            "referrer_source": "direct", "utm_source": "old", "utm_medium": None, "utm_campaign": "spring",
            "browser": "Firefox", "os": "Linux", "device": "desktop", "user_agent": None, "props": {}, "country": ""}
    buf = io.BytesIO()
    buf.write(MAGIC + v2.fingerprint)
    fastavro.schemaless_writer(buf, v2.writer, {"source_partition": 0, "source_offset": 10**9, "items": [item]})
    return buf.getvalue(), event_id


def test_utm_content_term_and_screen_from_the_browser_to_the_api(tally_env, spawn, tmp_path):
    tally_env.vars.update({"TALLY_API_RATE_LIMIT_BURST": "1000"})
    s = tally_env.settings
    spawn(tally_env, "sink")
    spawn(tally_env, "worker")
    spawn(tally_env, "collector")
    spawn(tally_env, "dashboard")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.collector_port}/healthz"), 60, "collector")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    wait_for(lambda: worker_ready(s), 90, "worker in its consumer group")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.dashboard_port}/healthz"), 30, "dashboard")
    collector = f"http://127.0.0.1:{s.collector_port}"
    events = sent()

    with static_site(tmp_path / "site") as origin, headless_chromium(tmp_path / "profile") as devtools:
        for folder, attrs in (("promo", "data-screen"), ("plain", "")):
            (tmp_path / "site" / folder).mkdir()
            for name in ("a.html", "b.html"):
                (tmp_path / "site" / folder / name).write_text(PAGE.format(attrs=attrs, collector=collector))

        async def visit(ua: str, width: int, steps: list) -> None:
            async with aiohttp.ClientSession() as http, http.ws_connect(
                    await asyncio.to_thread(new_tab, devtools), max_msg_size=0) as ws:
                cdp = CDP(ws)
                await cdp.call("Page.enable")
                await cdp.call("Runtime.enable")
                # A real browser's user agent (headless Chromium's own is a bot's) and a window width.
                await cdp.call("Emulation.setUserAgentOverride", userAgent=ua)
                await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=800, deviceScaleFactor=1,
                               mobile=False)
                for step in steps:
                    if isinstance(step, str):
                        await cdp.navigate(origin + step)
                        assert await cdp.eval("innerWidth") == width
                    else:
                        await cdp.eval(f"tally({step[0]!r})")

        for ua, width, steps in VISITORS:  # one after another: each visitor's events in order
            asyncio.run(visit(ua, width, steps))

        wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL WHERE site = 'example.com'")[0][0]
                 == len(events), 90, f"the {len(events)} events the browser sent")
        wait_for(lambda: [int(x) for x in query_rows(
            s, "SELECT count(), sum(events) FROM sessions FINAL WHERE site = 'example.com' AND deleted = 0")[0]]
            == [len(VISITORS), len(events)], 90, "one visit per visitor")

    stored = query_rows(s, "SELECT path, utm_content, utm_term, props['screen'] FROM pageviews FINAL "
                           "WHERE site = 'example.com' ORDER BY path, utm_content")
    want = [(e.path, None if e.content == NOT_SET else e.content, None if e.term == NOT_SET else e.term,
             "" if e.screen == NOT_SET else e.screen) for e in events]
    assert sorted(map(tuple, stored), key=repr) == sorted(want, key=repr)

    key = new_key(tally_env, "--site", "example.com")

    def ask(**kw) -> list[dict]:
        status, got = api(s, key, {"site_id": "example.com", "date_range": "day", **kw})
        assert status == 200, (kw, got)
        return got["results"]

    event_metrics = ["visitors", "pageviews", "events"]
    mixed = ["visitors", "pageviews", "visits", "bounce_rate"]
    for dimension, field in (("visit:utm_content", "content"), ("visit:utm_term", "term")):
        assert by_value(ask(metrics=event_metrics, dimensions=[dimension])) == expected(events, field, event_metrics)
        # A visit's utm_content and utm_term are its entry pageview's (from `sessions`).
        assert by_value(ask(metrics=mixed, dimensions=[dimension])) == expected(events, field, mixed)
    assert by_value(ask(metrics=event_metrics, dimensions=["visit:screen"])) == expected(events, "screen", event_metrics)
    assert {e.screen for e in events} == {"Mobile", "Laptop", "Desktop", NOT_SET}

    def top(filters: list, metrics: list[str]) -> list:
        return ask(metrics=metrics, filters=filters)[0]["metrics"]

    assert top([["is", "visit:utm_content", ["banner"]]], mixed) == figures(events, lambda e: e.content == "banner", mixed)
    assert top([["contains", "visit:utm_term", ["BOOTS"], {"case_sensitive": False}]], mixed) == figures(
        events, lambda e: "boots" in e.term, mixed)
    assert top([["is", "visit:screen", ["Laptop", "Desktop"]]], event_metrics) == figures(
        events, lambda e: e.screen in ("Laptop", "Desktop"), event_metrics)
    got = ask(metrics=event_metrics, dimensions=["visit:utm_content"], filters=[["is_not", "visit:screen", [NOT_SET]]])
    assert by_value(got) == expected([e for e in events if e.screen != NOT_SET], "content", event_metrics)

    # Visits do not keep the width class: a visit metric with it is a 400 that says so.
    status, err = api(s, key, {"site_id": "example.com", "date_range": "day", "metrics": ["visits"],
                               "dimensions": ["visit:screen"]})
    assert status == 400 and "Metric `visits` cannot be queried with the dimension `visit:screen`" in err["error"]

    # A record of the previous pageview_batch version still loads: no utm_content or utm_term.
    value, event_id = old_version_record("example.com")
    produce(s, "pageviews.enriched", [value], partition=0)
    wait_for(lambda: query_rows(s, f"SELECT count() FROM pageviews WHERE event_id = '{event_id}'")[0][0] == 1,
             60, "the older record in pageviews")
    assert [tuple(r) for r in query_rows(s, "SELECT utm_campaign, utm_content, utm_term FROM pageviews "
                                            f"WHERE event_id = '{event_id}'")] == [("spring", None, None)]
    got = ask(metrics=["visitors"], dimensions=["visit:utm_content", "visit:utm_campaign"],
              filters=[["is", "event:page", ["/legacy"]]])
    assert got == [{"dimensions": [NOT_SET, "spring"], "metrics": [1]}]
