"""Time to a fully rendered site dashboard in headless Chromium, against the sum of its API calls.

    .venv/bin/python bench/dashboard.py [--events 10000000] [--repeat 5]

Seeds a temporary warehouse with bench/api.py's generator and rollups (30 days, 4 sites,
the measured one holding 70% of the events, one visit per visitor and day), then runs what `tally up` runs for reading:
the sink's read service in this process and `tally dashboard` as its own process. An
admin signs in through the form in headless Chromium (/usr/bin/chromium over the
DevTools protocol), then the bench opens `/sites/site0.test?period=30d` --repeat times.

- render: from navigation start to the moment every part of the page has loaded (top
  stats, chart drawn, all five panels: `body[data-loaded="1"]`), read from the page's own
  clock (performance.now() in a MutationObserver installed before the page's scripts).
- baseline: the Stats API calls that page made (recorded from the browser's network
  events: method, path, body), replayed one after another over HTTP with an API key,
  summed; interleaved with the renders so both see the same machine. The realtime count
  is not part of it: the page does not wait for it.

ratio = render p50 / baseline p50 (under 1 when the browser's parallel requests beat the
sequential sum). Target: render <= 1500 ms over 10M events. The last line is one JSON
object with `render_ms` (the p50), `baseline_ms`, `ratio` and the load averages.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import aiohttp

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tally.api.accounts import new_user  # noqa: E402
from tally.sinks.accountstore import put_user  # noqa: E402

from bench.api import SITE, bench_args, seeded_stack  # noqa: E402
from tests.conftest import wait_for  # noqa: E402
from tests.test_tracker_browser import CDP, CHROMIUM_FLAGS  # noqa: E402

EMAIL, PASSWORD = "bench@example.com", "bench-password-1234"
# Runs before the page's own scripts: the page clock's reading when every part has loaded.
MARK = """new MutationObserver((_, obs) => {
  if (document.body && document.body.dataset.loaded === "1") { window.__rendered = performance.now(); obs.disconnect(); }
}).observe(document, {subtree: true, attributes: true, attributeFilter: ["data-loaded"]});"""


class NetCDP(CDP):
    """The DevTools client, keeping the Stats API requests the page sends."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        super().__init__(ws)
        self.calls: list[tuple[str, str, str | None]] = []

    def seen(self, msg: dict[str, Any]) -> None:
        if msg.get("method") == "Network.requestWillBeSent":
            req = msg["params"]["request"]
            path = req["url"].split("/", 3)[-1]
            if path.startswith("api/"):
                self.calls.append((req["method"], "/" + path, req.get("postData")))

    async def rendered(self, url: str) -> float:
        await self.call("Page.navigate", url="about:blank")
        self.calls.clear()
        await self.call("Page.navigate", url=url)
        for _ in range(1200):
            state = await self.eval("[location.pathname, window.__rendered || 0, "
                                    "document.body ? document.body.dataset.loaded || '' : '']")
            if state[0] != "blank" and state[1]:
                return float(state[1])
            if state[2] == "error":
                raise RuntimeError(await self.eval("document.getElementById('error').textContent"))
            await asyncio.sleep(0.05)
        raise TimeoutError(f"{url} did not finish loading in 60 s")


def replay(conn: http.client.HTTPConnection, key: str, calls: list[tuple[str, str, str | None]]) -> float:
    """The page's API calls, one after another: their summed time in ms."""
    total = 0.0
    for method, path, body in calls:
        t0 = time.perf_counter()
        conn.request(method, path, body=body.encode() if body else None,
                     headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"})
        resp = conn.getresponse()
        resp.read()
        total += (time.perf_counter() - t0) * 1000
        assert resp.status == 200, (path, resp.status)
    return total


async def measure(base: str, port: int, key: str, devtools: str, repeat: int) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.ws_connect(devtools, max_msg_size=0) as ws:
        cdp = NetCDP(ws)
        for domain in ("Page", "Runtime", "Network"):
            await cdp.call(f"{domain}.enable")
        await cdp.call("Emulation.setDeviceMetricsOverride", width=1280, height=900, deviceScaleFactor=1, mobile=False)
        await cdp.call("Page.addScriptToEvaluateOnNewDocument", source=MARK)
        await cdp.navigate(f"{base}/login")
        await cdp.eval(f"document.getElementById('email').value = {json.dumps(EMAIL)};"
                       f"document.getElementById('password').value = {json.dumps(PASSWORD)};"
                       "document.querySelector('main form').submit()")
        await cdp.navigated("/")
        url = f"{base}/sites/{SITE}?period=30d"
        await cdp.rendered(url)  # warm-up: the static files, the guard's verdicts, kept connections
        calls = [c for c in cdp.calls if "/realtime/" not in c[1]]
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)  # keep-alive, as the browser's
        replay(conn, key, calls)
        render_ms, baseline_ms = [], []
        for _ in range(repeat):
            render_ms.append(await cdp.rendered(url))
            baseline_ms.append(replay(conn, key, [c for c in cdp.calls if "/realtime/" not in c[1]]))
        conn.close()
        return {"calls": [f"{m} {p}" + (f" {b}" if b else "") for m, p, b in calls],
                "render_ms": render_ms, "baseline_ms": baseline_ms}


def chromium(profile: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(["chromium", *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    wait_for(lambda: port_file.exists() and port_file.read_text().strip(), 60, "chromium's DevTools port")
    port = int(port_file.read_text().split()[0])
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as resp:
        page = next(t for t in json.loads(resp.read()) if t["type"] == "page")
    return proc, page["webSocketDebuggerUrl"]


def main() -> None:
    args = bench_args(__doc__, repeat=5)
    load_start = [round(x, 2) for x in os.getloadavg()]
    with seeded_stack("tally-bench-dashboard-", args.events,
                      lambda writer: put_user(writer, new_user(EMAIL, PASSWORD, "admin", ()))) as st:
        browser, devtools = chromium(Path(st.tmp) / "chromium-profile")
        try:
            port = st.settings.dashboard_port
            got = asyncio.run(measure(f"http://127.0.0.1:{port}", port, st.key, devtools, args.repeat))
        finally:
            browser.terminate()
            browser.wait(30)
    rows, site_rows = st.rows, st.site_rows
    print(f"the page's Stats API calls ({len(got['calls'])}, realtime left out):")
    for c in got["calls"]:
        print(f"  {c}")
    render, baseline = statistics.median(got["render_ms"]), statistics.median(got["baseline_ms"])
    print(f"render   p50 {render:7.1f} ms  all {[round(x) for x in got['render_ms']]}")
    print(f"baseline p50 {baseline:7.1f} ms  all {[round(x) for x in got['baseline_ms']]} (the calls one after another)")
    print(json.dumps({"bench": "dashboard", "events": rows, "site_rows": site_rows, "repeat": args.repeat,
                      "api_calls": len(got["calls"]), "render_ms": round(render, 1),
                      "render_max_ms": round(max(got["render_ms"]), 1), "baseline_ms": round(baseline, 1),
                      "ratio": round(render / baseline, 3), "target_render_ms": 1500,
                      "load": {"start": load_start, "end": [round(x, 2) for x in os.getloadavg()]}}))


if __name__ == "__main__":
    main()
