"""tally.js's opt-in extensions in a real browser (headless Chromium over DevTools).

One collector (no TALLY_PROPS_ALLOWLIST: the extensions' props need none), one static
site and one browser for the module; each test drives its own tab on its own path prefix
and reads the beacons that reached Kafka: outbound-link clicks, file downloads (default
and data-file-types), tally('404'), hash routing (data-hash, and Plausible's h: 1 counted
alike), manual pageviews (data-manual), the screen width class (data-screen), engagement
events (data-engagement), utm_content/utm_term in the path; and, under GPC and under DNT,
nothing at all from any of them.
"""

from __future__ import annotations

import asyncio
import shutil
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import wait_for
from tests.helpers import post_json, read_beacons
from tests.test_collector import make_env, start_collector
from tests.test_tracker_browser import CDP, headless_chromium, new_tab, static_site

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed "
                                 "(infra/bootstrap.sh installs it)")]

STUB = "<script>window.tally = window.tally || function () { (tally.q = tally.q || []).push(arguments) };</script>"
PAGE = """<!doctype html>
<html><head><title>tally extension test</title>{stub}
<script defer data-site="example.com" {attrs} src="{collector}/js/tally.js"></script>
{extra}
<style>a {{ display: block; padding: 12px; }}</style>
</head><body>{body}</body></html>
"""
# Keeps the page where it is after a click (window, bubble phase: after the trackers' listeners).
STAY = "<script>addEventListener('click', e => e.preventDefault())</script>"


class Stack:
    def __init__(self, settings: Any, root: Any, origin: str, collector: str, devtools: int) -> None:
        self.settings, self.root, self.origin = settings, root, origin
        self.collector, self.devtools = collector, devtools
        self.other = origin.replace("127.0.0.1", "localhost")  # same server, another host

    def page(self, path: str, attrs: str = "", extensions: tuple[str, ...] = (), body: str = "",
             stub: bool = False, extra: str = "") -> None:
        """A page with the core (`attrs` on its tag) and `extensions` ("name" or "name attrs")."""
        tags = "".join(f'<script defer {a} src="{self.collector}/js/{name}"></script>'
                       for name, _, a in (e.partition(" ") for e in extensions))
        file = self.root / path.lstrip("/")
        file.parent.mkdir(parents=True, exist_ok=True)
        file.write_text(PAGE.format(stub=STUB if stub else "", attrs=attrs, collector=self.collector,
                                    extra=tags + extra, body=body))

    def beacons(self, prefix: str, want: int, settle: float = 2.0) -> list[dict[str, Any]]:
        """The beacons whose page path starts with `prefix`, once `want` have arrived and a
        duplicate or a late extra one has had time to show up too (ordered by event_id)."""
        def mine() -> list[dict[str, Any]]:
            return [b for b in read_beacons(self.settings, 0, timeout=5) if b["path"].startswith(prefix)]

        wait_for(lambda: len(mine()) >= want, 30, f"{want} beacons under {prefix}", interval=0.3)
        time.sleep(settle)
        return sorted(mine(), key=lambda b: b["event_id"])

    def drive(self, scenario: Callable[[CDP], Awaitable[None]]) -> None:
        """Run `scenario` in a fresh tab."""
        async def run() -> None:
            ws_url = await asyncio.to_thread(new_tab, self.devtools)
            async with aiohttp.ClientSession() as http, http.ws_connect(ws_url, max_msg_size=0) as ws:
                cdp = CDP(ws)
                await cdp.call("Page.enable")
                await cdp.call("Runtime.enable")
                await scenario(cdp)

        asyncio.run(run())


def summary(beacons: list[dict[str, Any]]) -> list[tuple[str, str, dict[str, str]]]:
    """(event, path, props) of each beacon, in a fixed order: beacons sent a few ms apart
    may reach the collector in either order."""
    return sorted(((b["event"], b["path"], b["props"]) for b in beacons), key=str)


@pytest.fixture(scope="module")
def stack(broker, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("extensions")
    env = make_env(broker, tmp)
    collector = start_collector(env, tmp / "collector.log")
    try:
        with static_site(tmp / "site") as origin, headless_chromium(tmp / "profile") as devtools:
            (tmp / "site" / "away.html").write_text("<!doctype html><title>away</title><p>elsewhere</p>")
            yield Stack(env.settings, tmp / "site", origin, f"http://127.0.0.1:{env.settings.collector_port}",
                        devtools)
    finally:
        collector.stop()


def test_outbound_link_clicks(stack):
    away = f"{stack.other}/away.html"
    links = (f'<a id="ext" href="{away}?ref=news#top">elsewhere</a>'
             '<a id="mail" href="mailto:bob@example.com" onclick="event.preventDefault()">mail</a>'
             '<a id="in" href="/out/inner.html">inner</a>')
    stack.page("/out/index.html", extensions=("tally.outbound.js",), body=links)
    stack.page("/out/inner.html", extensions=("tally.outbound.js",), body=links)

    async def scenario(cdp: CDP) -> None:
        await cdp.navigate(f"{stack.origin}/out/index.html")
        await asyncio.to_thread(stack.beacons, "/out/", 1, 0)
        await cdp.click("#ext", "middle")  # a new tab: the page stays
        await cdp.click("#mail")  # not http(s): no event
        await cdp.click("#in")  # same host: the next page's pageview only
        await asyncio.to_thread(stack.beacons, "/out/", 3, 0)
        await cdp.navigated("/out/inner.html")
        await cdp.click("#ext")  # the page unloads; sendBeacon still delivers
        got = await asyncio.to_thread(stack.beacons, "/out/", 4)
        url = {"url": away}  # origin and path only
        assert summary(got) == sorted([("pageview", "/out/index.html", {}),
                                       ("Outbound Link: Click", "/out/index.html", url),
                                       ("pageview", "/out/inner.html", {}),
                                       ("Outbound Link: Click", "/out/inner.html", url)], key=str)

    stack.drive(scenario)


def test_file_downloads_default_types_and_data_file_types(stack):
    both = ("tally.outbound.js", "tally.downloads.js")
    stack.page("/dl/index.html", extensions=both, extra=STAY, body=(
        '<a id="pdf" href="/files/Report.PDF?token=abc">report</a>'
        f'<a id="zip" href="{stack.other}/dist/app-1.2.zip">app</a>'  # another host: a download, not outbound
        '<a id="page" href="/dl/page.html">page</a>'
        f'<a id="ext" href="{stack.other}/away.html">away</a>'))
    stack.page("/dl/custom.html", extensions=("tally.outbound.js", 'tally.downloads.js data-file-types="csv, .TXT"'),
               extra=STAY, body=('<a id="pdf" href="/files/report.pdf">report</a>'
                                 '<a id="csv" href="/export/data.csv">data</a>'
                                 '<a id="txt" href="/notes.txt">notes</a>'))

    async def scenario(cdp: CDP) -> None:
        await cdp.navigate(f"{stack.origin}/dl/index.html")
        for link in ("#pdf", "#zip", "#page", "#ext"):
            await cdp.click(link)
        got = await asyncio.to_thread(stack.beacons, "/dl/", 4)
        assert summary(got) == sorted([
            ("pageview", "/dl/index.html", {}),
            ("File Download", "/dl/index.html", {"url": f"{stack.origin}/files/Report.PDF"}),
            ("File Download", "/dl/index.html", {"url": f"{stack.other}/dist/app-1.2.zip"}),
            ("Outbound Link: Click", "/dl/index.html", {"url": f"{stack.other}/away.html"})], key=str)
        await cdp.navigate(f"{stack.origin}/dl/custom.html")
        await cdp.click("#pdf", "middle")  # not on the page's own list: nothing
        await cdp.click("#csv")
        await cdp.click("#txt", "middle")
        got = await asyncio.to_thread(stack.beacons, "/dl/custom", 3)
        assert summary(got) == sorted([
            ("pageview", "/dl/custom.html", {}),
            ("File Download", "/dl/custom.html", {"url": f"{stack.origin}/export/data.csv"}),
            ("File Download", "/dl/custom.html", {"url": f"{stack.origin}/notes.txt"})], key=str)

    stack.drive(scenario)


def test_404_pages(stack):
    # Called inline, before the deferred tracker has loaded: the stub queues it.
    stack.page("/nf/gone.html", stub=True, extra="<script>tally('404')</script>")

    async def scenario(cdp: CDP) -> None:
        await cdp.navigate(f"{stack.origin}/nf/gone.html?utm_source=mail&email=bob%40example.com")
        got = await asyncio.to_thread(stack.beacons, "/nf/", 2)
        path = "/nf/gone.html?utm_source=mail"
        assert summary(got) == sorted([("404", path, {"path": path}), ("pageview", path, {})], key=str)

    stack.drive(scenario)


def test_hash_routing_only_in_hash_mode_and_plausibles_h_counts_the_same(stack):
    stack.page("/hash/index.html", attrs="data-hash")
    stack.page("/nohash/index.html")
    routes = ("#/settings?tab=2", "#/settings?tab=3", "#!/orders/0f8fad5b-d9cb-469f-a165-70867728950e",
              "#access_token=ya29.a0AfH6SMBx8z9&token_type=Bearer")
    hrefs: list[str] = []

    async def scenario(cdp: CDP) -> None:
        await cdp.navigate(f"{stack.origin}/hash/#/start")
        hrefs.append(await cdp.eval("location.href"))
        await asyncio.to_thread(stack.beacons, "/hash/", 1, 0)
        for route in routes:
            await cdp.eval(f"location.hash = '{route}'")
            hrefs.append(await cdp.eval("location.href"))
            await asyncio.sleep(0.2)
        await cdp.eval("history.back()")  # popstate and hashchange: one pageview
        got = await asyncio.to_thread(stack.beacons, "/hash/", 5)
        # The route's own query is never sent (tab=3 is the same page again); the collector
        # redacts ids in it like in any path; a fragment of parameters (a sign-in token) is
        # no route and is never sent; back to the orders route: one pageview.
        assert sorted(b["path"] for b in got) == ["/hash/", "/hash/orders/:uuid", "/hash/orders/:uuid",
                                                  "/hash/settings", "/hash/start"]
        assert {b["event"] for b in got} == {"pageview"}

        await cdp.navigate(f"{stack.origin}/nohash/#/a")
        await cdp.eval("location.hash = '#/b'")
        got = await asyncio.to_thread(stack.beacons, "/nohash/", 1)
        assert summary(got) == [("pageview", "/nohash/", {})]

    stack.drive(scenario)
    # Plausible's tracker in hash mode sends the same URLs (location.href) with h: 1: the
    # collector counts the same pages as tally.js's data-hash does.
    for href in hrefs:
        body = {"n": "pageview", "u": href.replace("/hash/", "/phash/"), "d": "example.com", "h": 1}
        status, resp, _ = post_json(f"{stack.collector}/api/event", body)
        assert status == 202, resp
    tally_pages = {b["path"].replace("/hash/", "/phash/") for b in stack.beacons("/hash/", 5, settle=0)}
    plausible = sorted(b["path"] for b in stack.beacons("/phash/", len(hrefs)))
    assert plausible == ["/phash/", "/phash/orders/:uuid", "/phash/settings", "/phash/settings", "/phash/start"]
    assert set(plausible) == tally_pages


def test_manual_pageviews(stack):
    stack.page("/manual/index.html", attrs="data-manual")

    async def scenario(cdp: CDP) -> None:
        await cdp.navigate(f"{stack.origin}/manual/index.html")
        await cdp.eval("history.pushState({}, '', '/manual/next')")  # no automatic pageview either
        await cdp.eval("tally('pageview', {u: '/manual/ticket/alice@example.com?utm_term=x&secret=1'})")
        await cdp.eval("tally('pageview')")
        await cdp.eval("tally('signup', {u: 'https://example.com/manual/custom#frag'})")
        got = await asyncio.to_thread(stack.beacons, "/manual/", 3)
        assert summary(got) == sorted([("pageview", "/manual/next", {}),
                                       ("pageview", "/manual/ticket/:email?utm_term=x", {}),
                                       ("signup", "/manual/custom", {})], key=str)

    stack.drive(scenario)


def test_screen_width_class_and_utm_content_and_term(stack):
    stack.page("/screen/index.html", attrs="data-screen")
    widths = {400: "Mobile", 575: "Mobile", 576: "Tablet", 991: "Tablet", 992: "Laptop", 1439: "Laptop",
              1440: "Desktop", 2560: "Desktop"}

    async def scenario(cdp: CDP) -> None:
        for width in widths:
            await cdp.call("Emulation.setDeviceMetricsOverride", width=width, height=800, deviceScaleFactor=1,
                           mobile=False)
            await cdp.navigate(f"{stack.origin}/screen/index.html?utm_content={width}&utm_term=shoes&x=1")
            assert await cdp.eval("innerWidth") == width
        await cdp.eval("tally('signup')")  # events carry the class too
        got = await asyncio.to_thread(stack.beacons, "/screen/", len(widths) + 1)
        assert summary(got) == sorted([
            *[("pageview", f"/screen/index.html?utm_content={w}&utm_term=shoes", {"screen": c})
              for w, c in widths.items()],
            ("signup", "/screen/index.html?utm_content=2560&utm_term=shoes", {"screen": "Desktop"})], key=str)

    stack.drive(scenario)


def test_engagement_scroll_depth_and_visible_time_on_hide_and_spa_navigation(stack):
    stack.page("/engage/index.html", attrs="data-engagement", body='<div style="height:5000px">tall</div>')
    bounds: dict[str, tuple[float, float]] = {}  # ms each engagement's e must lie between

    async def scenario(cdp: CDP) -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(
                await asyncio.to_thread(new_tab, stack.devtools), max_msg_size=0) as ws:
            await read(cdp, CDP(ws))

    async def read(cdp: CDP, other: CDP) -> None:
        """Read the page in `cdp` in three stretches, hiding it behind `other` in between."""
        async def hide() -> None:  # another tab to the front: this one is hidden, as a user would
            await other.call("Page.bringToFront")
            assert await cdp.eval("document.visibilityState") == "hidden"

        async def show() -> None:
            await cdp.call("Page.bringToFront")
            assert await cdp.eval("document.visibilityState") == "visible"

        async def scroll(fraction: float) -> None:  # the viewport's bottom at `fraction` of the page
            await cdp.eval(f"scrollTo(0, document.documentElement.scrollHeight * {fraction} - innerHeight)")
            await cdp.eval("new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")

        await cdp.call("Emulation.setDeviceMetricsOverride", width=800, height=1000, deviceScaleFactor=1,
                       mobile=False)
        await show()
        begin = time.monotonic()
        await cdp.navigate(f"{stack.origin}/engage/index.html")
        loaded = time.monotonic()
        await scroll(0.5)
        await asyncio.sleep(1.2)
        before = time.monotonic()
        await hide()  # 1: the first page, half read
        bounds["first"] = ((before - loaded) * 1000, (time.monotonic() - begin) * 1000)
        await asyncio.to_thread(stack.beacons, "/engage/", 2, 0)
        await asyncio.sleep(1.5)  # hidden time is not engaged time
        shown = time.monotonic()
        await show()
        visible = time.monotonic()
        await scroll(1.0)
        await asyncio.sleep(0.3)
        before = time.monotonic()
        await cdp.eval("history.pushState({}, '', '/engage/next')")  # 2: the first page, read to the end
        bounds["second"] = ((before - visible) * 1000, (time.monotonic() - shown) * 1000)
        await hide()  # 3: the next page, at the same scroll position
        await asyncio.to_thread(stack.beacons, "/engage/", 5, 0)
        await show()
        await hide()  # no news (no deeper scroll, under 3 s): nothing

    stack.drive(scenario)
    got = stack.beacons("/engage/", 5)
    assert sorted((b["event"], b["path"]) for b in got) == [  # sent ms apart: may arrive in either order
        ("engagement", "/engage/index.html"), ("engagement", "/engage/index.html"), ("engagement", "/engage/next"),
        ("pageview", "/engage/index.html"), ("pageview", "/engage/next")]
    engaged = [b["props"] for b in got if b["event"] == "engagement"]
    assert [p["tally:scroll_depth"] for p in engaged] == ["50", "100", "100"]
    for props, (low, high) in zip(engaged, (bounds["first"], bounds["second"]), strict=False):
        assert low - 1 <= int(props["tally:engaged_ms"]) <= high + 1, (props, low, high)  # Date.now(): whole ms
    assert set(engaged[0]) == {"tally:scroll_depth", "tally:engaged_ms"}


@pytest.mark.parametrize(("signal", "prop", "js", "value"), [("gpc", "globalPrivacyControl", "true", True),
                                                          ("dnt", "doNotTrack", "'1'", "1")])
def test_nothing_is_sent_under_gpc_or_dnt(stack, signal, prop, js, value):
    prefix = f"/private-{signal}"
    stack.page(f"{prefix}/index.html", attrs="data-hash data-screen data-engagement", stub=True, extra=STAY,
               extensions=("tally.outbound.js", "tally.downloads.js"),
               body=f'<a id="ext" href="{stack.other}/away.html">away</a><a id="pdf" href="/a.pdf">pdf</a>')
    stack.page(f"{prefix}/manual.html", attrs="data-manual")
    stack.page(f"{prefix}-control/index.html")
    override = f"Object.defineProperty(navigator, '{prop}', {{get: () => {js}}})"

    async def scenario(cdp: CDP) -> None:
        await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=override)
        await cdp.navigate(f"{stack.origin}{prefix}/index.html#/a")
        assert await cdp.eval(f"navigator.{prop}") == value
        await cdp.eval("location.hash = '#/b'")
        await cdp.click("#ext")
        await cdp.click("#pdf")
        await cdp.eval("tally('404'); tally('signup', {u: '/x'})")
        await cdp.navigate(f"{stack.origin}{prefix}/manual.html")
        await cdp.eval(f"tally('pageview', {{u: '{prefix}/manual/page'}})")

    stack.drive(scenario)

    async def control(cdp: CDP) -> None:  # a tab without the signal: its beacon arrives
        await cdp.navigate(f"{stack.origin}{prefix}-control/index.html")

    stack.drive(control)
    got = stack.beacons(prefix, 1)
    assert summary(got) == [("pageview", f"{prefix}-control/index.html", {})]
