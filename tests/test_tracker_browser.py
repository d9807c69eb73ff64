"""tally.js in a real browser: headless Debian Chromium, driven over the DevTools protocol.

A page on one origin embeds the tracker from the collector (another origin,
so CORS is real). Exactly one beacon reaches Kafka for the load, one more for
a pushState navigation, none for a replaceState to the same URL, one for a
custom event; the tracker sends the pathname, utm_* and data-query-params parameters and the
referrer's origin only; nothing is stored in the browser; GPC in the browser sends nothing;
data-notice shows one line.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import shutil
import subprocess
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import free_port, wait_for
from tests.helpers import read_beacons
from tests.test_collector import make_env, start_collector

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(not shutil.which("chromium"), reason="chromium not installed "
                                 "(infra/bootstrap.sh installs it)")]

CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--remote-debugging-port=0", "--remote-allow-origins=*"]

PAGE = """<!doctype html>
<html><head><title>tally test</title>
<script defer data-site="example.com" data-query-params="lang" {notice} src="{collector}/js/tally.js"></script>
</head><body><h1>hello</h1></body></html>
"""


class _Quiet(SimpleHTTPRequestHandler):
    def log_message(self, *_args: Any) -> None:
        pass


class CDP:
    """A minimal DevTools protocol client over one page's websocket."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.ids = itertools.count(1)

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        msg_id = next(self.ids)
        await self.ws.send_json({"id": msg_id, "method": method, "params": params})
        while True:
            msg = await asyncio.wait_for(self.ws.receive_json(), 30)
            self.seen(msg)
            if msg.get("id") == msg_id:
                assert "error" not in msg, msg
                return msg["result"]

    def seen(self, msg: dict[str, Any]) -> None:
        """Every message read past while waiting for an answer (events): for subclasses."""

    async def eval(self, expression: str) -> Any:
        result = await self.call("Runtime.evaluate", expression=expression, awaitPromise=True,
                                 returnByValue=True)
        assert "exceptionDetails" not in result, result
        return result["result"].get("value")

    async def click(self, selector: str, button: str = "left") -> None:
        """A real mouse click (trusted events: click, or auxclick for the middle button)."""
        x, y = await self.eval(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                               ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            await self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button=button, clickCount=1)

    async def navigate(self, url: str) -> None:
        await self.call("Page.navigate", url=url)
        await self.navigated(urllib.parse.urlsplit(url).path)

    async def navigated(self, path: str) -> None:
        """Wait until the page at `path` has loaded (and its deferred tracker has run)."""
        for _ in range(100):
            if await self.eval("location.pathname + ' ' + document.readyState") == f"{path} complete":
                return
            await asyncio.sleep(0.1)
        raise AssertionError(f"{path} did not load")


@contextlib.contextmanager
def static_site(root: Path) -> Iterator[str]:
    """`root` served on its own origin (returned)."""
    root.mkdir()
    server = ThreadingHTTPServer(("127.0.0.1", free_port()), partial(_Quiet, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()


@contextlib.contextmanager
def headless_chromium(profile: Path) -> Iterator[int]:
    """A headless Chromium on a fresh profile (no state from earlier runs); its DevTools port."""
    proc = subprocess.Popen(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, "chromium's DevTools port")
        yield int(port_file.read_text().split()[0])
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def new_tab(port: int) -> str:
    """A new blank tab in the browser on DevTools `port`: its page websocket."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}/json/new?about:blank", method="PUT")
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())["webSocketDebuggerUrl"]


@pytest.fixture
def site(tmp_path):
    """A static test site on its own origin."""
    root = tmp_path / "site"
    with static_site(root) as origin:
        yield root, origin


@pytest.fixture
def chromium(tmp_path):
    with headless_chromium(tmp_path / "profile") as port:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
            page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
        yield page["webSocketDebuggerUrl"]


def test_tracker_counts_loads_spa_navigations_and_events_and_stores_nothing(broker, tmp_path, site, chromium):
    # The collector would keep `from` (and drops every non-allowlisted prop): seeing it
    # missing proves the tracker itself leaves it out.
    env = make_env(broker, tmp_path, TALLY_QUERY_PARAMS="utm_*,lang,from", TALLY_PROPS_ALLOWLIST="*:plan,*:seats")
    s = env.settings
    collector_proc = start_collector(env, tmp_path / "collector.log")
    root, origin = site
    collector = f"http://127.0.0.1:{s.collector_port}"
    (root / "index.html").write_text(PAGE.format(collector=collector, notice=""))
    (root / "notice.html").write_text(PAGE.format(collector=collector, notice="data-notice"))
    (root / "gpc.html").write_text(PAGE.format(collector=collector, notice=""))

    def beacons(want: int, settle: float = 2.0) -> list[dict]:
        wait_for(lambda: len(read_beacons(s, 0, timeout=5)) >= want, 30, f"{want} beacons", interval=0.3)
        time.sleep(settle)  # long enough for a duplicate to show up
        # Batches land on different partitions: order by event_id (UUIDv7, time-ordered).
        return sorted(read_beacons(s, 0, timeout=5), key=lambda b: b["event_id"])

    async def drive() -> None:
        async with aiohttp.ClientSession() as http, http.ws_connect(chromium, max_msg_size=0) as ws:
            cdp = CDP(ws)
            await cdp.call("Page.enable")
            await cdp.call("Runtime.enable")
            await cdp.navigate(f"{origin}/index.html?from=test&utm_source=news&lang=de&email=a%40b.example#top")
            got = await asyncio.to_thread(beacons, 1)
            assert len(got) == 1, got
            b = got[0]
            assert (b["site"], b["path"], b["event"]) == ("example.com", "/index.html?utm_source=news&lang=de",
                                                         "pageview")
            assert await cdp.eval("document.querySelectorAll('p').length") == 0  # no notice unless asked
            assert "Chrome" in b["user_agent"]

            await cdp.eval("history.pushState({}, '', '/spa/next')")
            got = await asyncio.to_thread(beacons, 2)
            assert [x["path"] for x in got] == ["/index.html?utm_source=news&lang=de", "/spa/next"]

            await cdp.eval("history.replaceState({step: 2}, '', '/spa/next')")  # same URL: no pageview
            await cdp.eval("tally('signup', {plan: 'pro', seats: 3})")
            got = await asyncio.to_thread(beacons, 3)
            assert len(got) == 3, got
            assert (got[2]["event"], got[2]["props"]) == ("signup", {"plan": "pro", "seats": "3"})

            # Nothing was stored: no cookie anywhere, no web storage, no IndexedDB.
            cookies = await cdp.call("Network.getAllCookies")
            assert cookies["cookies"] == []
            assert await cdp.eval("localStorage.length + sessionStorage.length") == 0
            assert await cdp.eval("indexedDB.databases().then(d => d.length)") == 0

            # A link from the page: the next page's beacon carries the referrer's origin only.
            await cdp.eval("location.href = '/notice.html?x=1'")
            got = await asyncio.to_thread(beacons, 4)
            await cdp.navigated("/notice.html")
            assert (got[3]["path"], got[3]["referrer"]) == ("/notice.html", origin)
            assert await cdp.eval("document.body.lastElementChild.textContent") == (
                "Privacy-friendly analytics: no cookies, no IP addresses stored.")

            # With Global Privacy Control on in the browser, the tracker sends nothing.
            await cdp.call("Page.addScriptToEvaluateOnNewDocument",
                           source="Object.defineProperty(navigator, 'globalPrivacyControl', {get: () => true})")
            await cdp.navigate(f"{origin}/gpc.html")
            assert await cdp.eval("navigator.globalPrivacyControl") is True
            await cdp.eval("tally('should-not-send')")
            got = await asyncio.to_thread(beacons, 4)
            assert len(got) == 4, got

    try:
        asyncio.run(drive())
    finally:
        collector_proc.stop()
