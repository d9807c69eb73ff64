"""The web dashboard in real headless Chromium against the real stack (Kafka broker,
collector, stream worker, sink with chDB, `tally dashboard`), seeded with the known
traffic of test_api.py: sign in through the form, the numbers shown equal the Stats
API's answers (asked with an API key), clicking a source filters every panel, the
adoption page shows its zero state, the goals panel shows the API's conversions and
clicking a goal filters by it, a shared link works without a session and stops after
revoke, and no request leaves 127.0.0.1. Screenshots of every page are saved
(TALLY_TEST_ARTIFACTS, else the test's tmp dir); docs/dashboard.md uses them."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import urllib.parse
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from tally.api.web.app import BAD_ROWS_BY_DAY, DROPS_BY_DAY
from tally.ops.stack import http_ok

from tests.conftest import start_pipeline, wait_for
from tests.helpers import collect_url, post_json, query_rows
from tests.test_api import api, new_key, send, tally, traffic
from tests.test_dashboard import PASSWORD, make_user
from tests.test_tracker_browser import CDP, chromium  # noqa: F401 (the fixture)

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed "
                                 "(infra/bootstrap.sh installs it)")]


class RecordingCDP(CDP):
    """The DevTools client, keeping the events it reads past (every request the page makes)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.requests: list[str] = []

    def seen(self, msg: dict[str, Any]) -> None:
        if msg.get("method") == "Network.requestWillBeSent":
            self.requests.append(msg["params"]["request"]["url"])

    async def until(self, expression: str, what: str, seconds: float = 30) -> Any:
        for _ in range(int(seconds * 10)):
            value = await self.eval(expression)
            if value:
                return value
            await asyncio.sleep(0.1)
        where = await self.eval("location.href + ' ' + document.documentElement.outerHTML.slice(0, 3000)")
        raise AssertionError(f"{what}: {expression} stayed false on {where}")

    async def loaded(self) -> None:
        state = await self.until("document.readyState === 'complete' && ['1', 'error'].includes(document.body.dataset.loaded) "
                                 "&& document.body.dataset.loaded", "page loaded")
        assert state == "1", await self.eval("document.getElementById('error') && document.getElementById('error').textContent")

    async def screenshot(self, path: Path) -> None:
        shot = await self.call("Page.captureScreenshot", format="png", captureBeyondViewport=True)
        path.write_bytes(base64.b64decode(shot["data"]))


STATS_JS = "JSON.stringify([...document.querySelectorAll('.stat')].map(s => [s.dataset.metric, " \
           "s.dataset.value === undefined ? null : Number(s.dataset.value)]))"
STATS_TEXT_JS = "JSON.stringify([...document.querySelectorAll('.stat .value')].map(v => v.textContent))"
EVENT_METRICS = ["visitors", "pageviews", "events"]
VISIT_METRICS = ["visits", "bounce_rate", "visit_duration"]


def rows_js(panel: str) -> str:
    return f"document.getElementById('panel-{panel}').dataset.rows"


def shown_drops(rows: str) -> list[list]:
    return [[d, r, int(n)] for d, r, n in json.loads(rows)]


def as_dict(rows: list[list]) -> dict[str, list[int]]:
    return {r[0]: list(r[1:]) for r in rows}


@dataclass
class Run:
    """What the browser steps share: the stack's settings, a key for the API's own answers."""

    env: Any
    key: str
    base: str
    artifacts: Path
    beacons: list[dict]
    pageviews: int

    def expect(self, extra: dict) -> dict:
        q = {"site_id": "example.com", "metrics": ["visitors", "pageviews", "events"], "date_range": "day", **extra}
        status, got = api(self.env.settings, self.key, q)
        assert status == 200, got
        return got

    def breakdown(self, dim: str, filters: list, metrics: list[str] = EVENT_METRICS) -> dict[str, list[int]]:
        got = self.expect({"metrics": metrics, "dimensions": [dim], "filters": filters,
                           "order_by": [[metrics[0], "desc"]], "pagination": {"limit": 10}})
        return {r["dimensions"][0]: r["metrics"] for r in got["results"]}


async def sign_in(cdp: RecordingCDP, run: Run) -> None:
    """Sign in through the form; the session cookie is HttpOnly."""
    # --- sign in through the form
    await cdp.navigate(f"{run.base}/login")
    await cdp.screenshot(run.artifacts / "login.png")
    await cdp.eval(f"document.getElementById('email').value = 'admin@example.com';"
                   f"document.getElementById('password').value = {json.dumps(PASSWORD)};"
                   "document.querySelector('main form').submit()")
    await cdp.until("location.pathname === '/' && document.readyState === 'complete' "
                    "&& document.querySelector('.sites') !== null", "signed in")
    assert await cdp.eval("document.cookie") == ""  # HttpOnly: no script can read the session


async def site_equals_api(cdp: RecordingCDP, run: Run) -> None:
    """The site dashboard for today equals the API's answers."""
    # --- the site dashboard for today equals the API
    await cdp.navigate(f"{run.base}/sites/example.com?period=day")
    await cdp.loaded()
    top = run.expect({"metrics": EVENT_METRICS + VISIT_METRICS,
                      "include": {"comparisons": {"mode": "previous_period"}}})["results"][0]["metrics"]
    assert json.loads(await cdp.eval(STATS_JS)) == [list(p) for p in zip(EVENT_METRICS + VISIT_METRICS, top, strict=True)]
    assert top[:3] == [10, run.pageviews, len(run.beacons)] and top[3] == 10  # one visit each, within seconds
    texts = json.loads(await cdp.eval(STATS_TEXT_JS))
    assert texts[4] == f"{top[4]}%" and texts[5] == f"{top[5]}s"
    series = run.expect({"dimensions": ["time"], "include": {"time_labels": True}})
    by_label = {r["dimensions"][0]: r["metrics"][0] for r in series["results"]}
    assert json.loads(await cdp.eval("document.getElementById('chart').dataset.points")) == [
        by_label.get(label, 0) for label in series["meta"]["time_labels"]]
    assert await cdp.eval("document.querySelectorAll('#chart canvas').length") == 1
    await cdp.eval("document.querySelector('.stat[data-metric=\"pageviews\"]').click()")  # picks the chart
    await cdp.until("new URL(location.href).searchParams.get('metric') === 'pageviews'", "chart metric")
    by_label = {r["dimensions"][0]: r["metrics"][1] for r in series["results"]}
    await cdp.until("document.getElementById('chart').dataset.points === "
                    + json.dumps(json.dumps([by_label.get(label, 0) for label in series["meta"]["time_labels"]],
                                            separators=(",", ":"))), "pageviews chart")
    for panel, dim in (("pages", "event:page"), ("sources", "visit:source"), ("devices", "visit:browser"),
                       ("countries", "visit:country"), ("events", "event:name")):
        assert as_dict(json.loads(await cdp.eval(rows_js(panel)))) == run.breakdown(dim, []), panel
    assert await cdp.eval("document.querySelector('#panel-countries .row-filter').textContent") == "(not set)"
    await visit_tabs(cdp, run, [])
    await cdp.eval("document.querySelector('#panel-devices [data-dim=\"visit:device\"]').click()")
    await cdp.until("document.getElementById('panel-devices').dataset.dim === 'visit:device'", "device tab")
    assert as_dict(json.loads(await cdp.eval(rows_js("devices")))) == run.breakdown("visit:device", [])
    await cdp.screenshot(run.artifacts / "dashboard.png")
    # keyboard: one tab stop per tab list (Browser, Operating system, Device, Screen size); the
    # arrow keys move along it and select
    assert await cdp.eval("[...document.querySelectorAll('#panel-devices [role=tab]')].map(t => t.tabIndex).join()") \
        == "-1,-1,0,-1"
    await cdp.eval("document.querySelector('#panel-devices [aria-selected=true]').focus()")
    await press(cdp, "ArrowLeft")
    await cdp.until("document.getElementById('panel-devices').dataset.dim === 'visit:os' && "
                    "document.activeElement.dataset.dim === 'visit:os'", "os tab by keyboard")
    assert as_dict(json.loads(await cdp.eval(rows_js("devices")))) == run.breakdown("visit:os", [])
    await press(cdp, "ArrowRight")
    await cdp.until("document.getElementById('panel-devices').dataset.dim === 'visit:device'", "device tab by keyboard")
    # every control has a name a screen reader can say
    assert await cdp.eval("[...document.querySelectorAll('select, input:not([type=hidden])')].filter(e => !e.labels.length "
                          "&& !e.getAttribute('aria-label')).map(e => e.id)") == []
    # the dark theme follows the system setting
    light = await cdp.eval("getComputedStyle(document.body).backgroundColor")
    await cdp.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "dark"}])
    assert await cdp.eval("getComputedStyle(document.body).backgroundColor") == "rgb(20, 22, 26)" != light
    await cdp.screenshot(run.artifacts / "dashboard-dark.png")
    await cdp.call("Emulation.setEmulatedMedia", features=[{"name": "prefers-color-scheme", "value": "light"}])


async def visit_tabs(cdp: RecordingCDP, run: Run, filters: list) -> None:
    """The entry and exit page tabs of the pages panel show the API's visit figures."""
    for dim, metrics in (("visit:entry_page", ["visitors", "visits", "bounce_rate"]),
                         ("visit:exit_page", ["visitors", "visits", "visit_duration"])):
        await cdp.eval(f"document.querySelector('#panel-pages [data-dim=\"{dim}\"]').click()")
        await cdp.until(f"document.getElementById('panel-pages').dataset.dim === '{dim}'", dim)
        shown = as_dict(json.loads(await cdp.eval(rows_js("pages"))))
        assert shown == run.breakdown(dim, filters, metrics) and shown, dim
    await cdp.eval("document.querySelector('#panel-pages [data-dim=\"event:page\"]').click()")
    await cdp.until("document.getElementById('panel-pages').dataset.dim === 'event:page'", "page tab")


async def press(cdp: RecordingCDP, key: str) -> None:
    for kind in ("rawKeyDown", "keyUp"):
        await cdp.call("Input.dispatchKeyEvent", type=kind, key=key, code=key,
                       windowsVirtualKeyCode={"ArrowLeft": 37, "ArrowRight": 39}[key])


async def source_filter(cdp: RecordingCDP, run: Run) -> None:
    """Clicking a source filters every panel, shows a chip, and goes into the URL."""
    # --- clicking a source filters every panel, shows a chip, and goes into the URL
    await cdp.eval("[...document.querySelectorAll('#panel-sources .row-filter')]"
                   ".find(b => b.textContent === 'Google').click()")
    await cdp.until("document.querySelectorAll('.chip').length === 1", "filter chip")
    await cdp.loaded()
    google = [["is", "visit:source", ["Google"]]]
    top = run.expect({"metrics": EVENT_METRICS + VISIT_METRICS, "filters": google})["results"][0]["metrics"]
    assert json.loads(await cdp.eval(STATS_JS)) == [list(p) for p in zip(EVENT_METRICS + VISIT_METRICS, top, strict=True)]
    assert 0 < top[0] < 10
    assert as_dict(json.loads(await cdp.eval(rows_js("pages")))) == run.breakdown("event:page", google)
    assert as_dict(json.loads(await cdp.eval(rows_js("devices")))) == run.breakdown("visit:device", google)
    assert "f=visit%3Asource%7CGoogle" in await cdp.eval("location.search")
    await cdp.screenshot(run.artifacts / "dashboard-filtered.png")
    await cdp.eval("document.querySelector('.chip').click()")
    await cdp.until("document.querySelectorAll('.chip').length === 0", "chip removed")
    await cdp.loaded()
    assert json.loads(await cdp.eval(STATS_JS))[0] == ["visitors", 10]


async def page_filter(cdp: RecordingCDP, run: Run) -> None:
    """A page filter: the visit cards say they do not apply (a visit has many pages), the
    entry pages tab shows the API's reason, the other panels are filtered."""
    await cdp.eval("[...document.querySelectorAll('#panel-pages .row-filter')].find(b => b.textContent === '/').click()")
    await cdp.until("document.querySelectorAll('.chip').length === 1", "filter chip")
    await cdp.loaded()
    home = [["is", "event:page", ["/"]]]
    top = run.expect({"filters": home})["results"][0]["metrics"]
    assert json.loads(await cdp.eval(STATS_JS)) == [*([m, v] for m, v in zip(EVENT_METRICS, top, strict=True)),
                                                    *([m, None] for m in VISIT_METRICS)]
    assert json.loads(await cdp.eval(STATS_TEXT_JS))[3:] == ["—"] * 3
    assert as_dict(json.loads(await cdp.eval(rows_js("countries")))) == run.breakdown("visit:country", home)
    await cdp.eval("document.querySelector('#panel-pages [data-dim=\"visit:entry_page\"]').click()")
    error = await cdp.until("document.getElementById('panel-pages').dataset.error", "entry pages refused")
    assert "Metric `visits` cannot be queried with a filter on `event:page`" in error
    assert await cdp.eval("document.getElementById('error').hidden")  # the rest of the page still shows
    await cdp.eval("document.querySelector('#panel-pages [data-dim=\"event:page\"]').click()")
    await cdp.until("document.getElementById('panel-pages').dataset.error === undefined", "page tab again")
    await cdp.eval("document.querySelector('.chip').click()")
    await cdp.until("document.querySelectorAll('.chip').length === 0", "chip removed")
    await cdp.loaded()


GOAL_METRICS = ["visitors", "events", "conversion_rate"]


async def goals_panel(cdp: RecordingCDP, run: Run) -> None:
    """The goals panel: uniques, conversions and conversion rate as the API has them;
    clicking a goal filters the dashboard by it (the visit cards do not apply)."""
    await cdp.navigate(f"{run.base}/sites/example.com?period=day")
    await cdp.loaded()
    shown = as_dict(json.loads(await cdp.eval(rows_js("goals"))))
    assert shown == run.breakdown("event:goal", [], GOAL_METRICS) == {"Visit /docs/*": [10, 10, 100.0],
                                                                      "signup": [4, 4, 40.0]}
    heads = await cdp.eval("[...document.querySelectorAll('#panel-goals th')].map(th => th.textContent).join('|')")
    assert heads == "Goal|Uniques|Total|Conversion rate"
    texts = await cdp.eval("[...document.querySelectorAll('#panel-goals tbody tr')].map(tr => tr.textContent).join('|')")
    assert texts == "Visit /docs/*1010100%|signup4440%"
    await cdp.screenshot(run.artifacts / "dashboard-goals.png")
    await cdp.eval("[...document.querySelectorAll('#panel-goals .row-filter')].find(b => b.textContent === 'signup').click()")
    await cdp.until("document.querySelectorAll('.chip').length === 1", "goal chip")
    await cdp.loaded()
    assert await cdp.eval("document.querySelector('.chip').textContent") == "goal is signup ✕"
    signup = [["is", "event:goal", ["signup"]]]
    top = run.expect({"filters": signup})["results"][0]["metrics"]
    assert top == [4, 0, 4]  # signups are events, not pageviews
    assert json.loads(await cdp.eval(STATS_JS)) == [*([m, v] for m, v in zip(EVENT_METRICS, top, strict=True)),
                                                    *([m, None] for m in VISIT_METRICS)]
    assert as_dict(json.loads(await cdp.eval(rows_js("goals")))) == {"signup": [4, 4, 40.0]}
    assert as_dict(json.loads(await cdp.eval(rows_js("devices")))) == run.breakdown("visit:browser", signup)
    assert "f=event%3Agoal%7Csignup" in await cdp.eval("location.search")
    await cdp.eval("document.querySelector('.chip').click()")
    await cdp.until("document.querySelectorAll('.chip').length === 0", "chip removed")
    await cdp.loaded()


async def adoption_zero_state(cdp: RecordingCDP, run: Run) -> None:
    """Product adoption: the explicit zero state for an empty window."""
    # --- product adoption: the explicit zero state for an empty window
    await cdp.navigate(f"{run.base}/adoption")
    await cdp.loaded()
    await cdp.eval("document.getElementById('afrom').value = '2020-01-01';"
                   "document.getElementById('ato').value = '2020-01-31';"
                   "document.getElementById('aapply').click()")
    await cdp.until("document.body.dataset.empty === 'true'", "adoption zero state")
    await cdp.loaded()
    rows = json.loads(await cdp.eval("JSON.stringify([...document.querySelectorAll('#adoption tbody tr')]"
                                     ".map(tr => [...tr.children].map(td => td.textContent)))"))
    assert len(rows) == 6 and rows[-1][0] == "all"
    assert all(r[2] == "0" and r[3] == "0" and r[4] == "no signal yet" for r in rows)
    await cdp.screenshot(run.artifacts / "adoption.png")


async def operations_page(cdp: RecordingCDP, run: Run) -> None:
    """Operations (admins): the components, drops and bad rows by reason per day as the
    warehouse has them, the salt of today present and none expired, the latest reconcile."""
    # --- operations (admins)
    out = tally(run.env, "reconcile", "--json")
    assert out.returncode == 0, out.stdout + out.stderr
    await cdp.navigate(f"{run.base}/operations")
    await cdp.loaded()
    names = await cdp.eval("[...document.querySelectorAll('#components tbody tr td:first-child')]"
                           ".map(td => td.textContent)")
    assert {"sink", "worker", "collector", "dashboard"} <= set(names)
    today = datetime.now(UTC).date().isoformat()
    for table, sql in (("drops", DROPS_BY_DAY), ("badrows", BAD_ROWS_BY_DAY)):
        shown = [[d, r, int(n)] for d, r, n in json.loads(await cdp.eval(f"document.getElementById('{table}').dataset.rows"))]
        assert shown == [[d, r, int(n)] for d, r, n in query_rows(run.env.settings, sql.text)], table
    assert [today, "bot", 1] in shown_drops(await cdp.eval("document.getElementById('drops').dataset.rows"))
    # the worker reports its salts with its health, every watchdog interval
    await cdp.until("document.getElementById('salts').dataset.state === 'ok'", "today's salt present, none expired")
    salts = await cdp.eval("document.getElementById('salts').textContent")
    assert f"{today}: salt present" in salts and "gone" in salts
    assert await cdp.eval("document.getElementById('reconcile').dataset.drift") == "0"
    assert "1 site-days checked, 0 with drift" in await cdp.eval("document.getElementById('reconcile').textContent")
    await cdp.screenshot(run.artifacts / "operations.png")


async def shared_link(cdp: RecordingCDP, run: Run) -> None:
    """A shared link: no session needed, and dead after revoke."""
    # --- a shared link: no session needed, and dead after revoke
    await cdp.call("Page.navigate", url="about:blank")  # no page left polling with the old session
    await cdp.call("Network.clearBrowserCookies")
    out = tally(run.env, "share", "create", "--site", "example.com")
    assert out.returncode == 0, out.stderr
    link = out.stdout.strip().splitlines()[-1]
    path = urllib.parse.urlsplit(link).path
    await cdp.navigate(f"{run.base}{path}?period=day")
    await cdp.loaded()
    assert json.loads(await cdp.eval(STATS_JS))[0] == ["visitors", 10]
    assert (await cdp.call("Network.getAllCookies"))["cookies"] == []
    await cdp.screenshot(run.artifacts / "shared.png")
    link_id = json.loads(tally(run.env, "share", "list", "--json").stdout)[0]["link_id"]
    assert tally(run.env, "share", "revoke", link_id).returncode == 0
    for _ in range(300):
        await cdp.navigate(f"{run.base}{path}?period=day")
        if (await cdp.eval("document.title")).startswith("Link not valid"):
            break
        await asyncio.sleep(0.1)
    else:
        raise AssertionError("the revoked link still opens the dashboard")


def test_dashboard_in_chromium_shows_the_apis_numbers(tally_env, spawn, chromium, tmp_path):  # noqa: F811
    tally_env.vars.update({"TALLY_TRUSTED_PROXIES": "127.0.0.1/32", "TALLY_API_RATE_LIMIT_BURST": "1000"})
    s = tally_env.settings
    artifacts = Path(os.environ.get("TALLY_TEST_ARTIFACTS") or tmp_path / "screenshots")
    artifacts.mkdir(parents=True, exist_ok=True)
    start_pipeline(tally_env, spawn)
    spawn(tally_env, "dashboard")
    base = f"http://127.0.0.1:{s.dashboard_port}"
    wait_for(lambda: http_ok(f"{base}/healthz"), 30, "dashboard")

    beacons = send(s, traffic())
    today = datetime.now(UTC).date().isoformat()
    pageviews = sum(b["event"] == "pageview" for b in beacons)
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL WHERE site = 'example.com'")[0][0]
             == len(beacons), 120, "every beacon stored")
    wait_for(lambda: query_rows(s, f"SELECT toUInt32(pageviews), toUInt32(visitors) FROM site_stats_daily "
                                   f"WHERE site = 'example.com' AND day = '{today}'") == [[pageviews, 10]],
             120, "site_day aggregates")
    wait_for(lambda: [int(v) for v in query_rows(s, "SELECT count(), sum(events) FROM sessions FINAL "
                                                    "WHERE site = 'example.com' AND deleted = 0")[0]]
             == [10, len(beacons)], 120, "every visit stored whole")
    # one crawler's beacon: dropped with the named reason `bot`, shown on the operations page
    status, resp, _ = post_json(collect_url(s), {"site": "example.com", "path": "/", "referrer": ""}, headers={
        "User-Agent": "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)",
        "X-Forwarded-For": "203.0.113.99"})
    assert status in (202, 204), resp
    wait_for(lambda: query_rows(s, f"SELECT toUInt32(sum(dropped)) FROM drops_daily WHERE day = '{today}' "
                                   "AND reason = 'bot'") == [[1]], 120, "the bot's drop counted")
    make_user(tally_env, "admin@example.com", "--role", "admin")
    key = new_key(tally_env, "--site", "example.com")
    for goal in (("--event", "signup"), ("--page", "/docs/*")):
        assert tally(tally_env, "goals", "add", "--site", "example.com", *goal).returncode == 0

    run = Run(tally_env, key, base, artifacts, beacons, pageviews)

    async def drive() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(chromium, max_msg_size=0) as ws:
            cdp = RecordingCDP(ws)
            for domain in ("Page", "Runtime", "Network"):
                await cdp.call(f"{domain}.enable")
            await cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1,
                           mobile=False)

            await sign_in(cdp, run)
            await site_equals_api(cdp, run)
            await source_filter(cdp, run)
            await page_filter(cdp, run)
            await goals_panel(cdp, run)
            await adoption_zero_state(cdp, run)
            await operations_page(cdp, run)
            await shared_link(cdp, run)
            # --- nothing left 127.0.0.1
            assert cdp.requests
            outside = [u for u in cdp.requests if not u.startswith(f"{base}/") and not u.startswith(("data:", "blob:"))]
            assert outside == []

    asyncio.run(drive())
