"""Demo traffic for `make up`: a few sites, paths, referrers and browsers."""

from __future__ import annotations

import json
import random
import urllib.request

from tally.config import Settings

PATHS = ["/", "/pricing", "/docs", "/docs/install", "/blog/hello", "/about"]
REFERRERS = [None, None, "https://www.google.com/", "https://news.ycombinator.com/", "https://duckduckgo.com/"]
AGENTS = [
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36",
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15",
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Mobile/15E148 Safari/604.1",
    "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
]


def send_demo_traffic(settings: Settings, beacons: int, seed: int = 7) -> int:
    rng = random.Random(seed)
    site = settings.allowed_sites[0] if settings.allowed_sites else "localhost"
    url = f"http://{settings.collector_host}:{settings.collector_port}/api/v1/collect"
    sent = 0
    for _ in range(beacons):
        body = {"site": site, "path": rng.choice(PATHS), "referrer": rng.choice(REFERRERS)}
        req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={
            "Content-Type": "application/json", "User-Agent": rng.choice(AGENTS)})
        with urllib.request.urlopen(req, timeout=15) as resp:
            if resp.status == 204:
                sent += 1
    return sent
