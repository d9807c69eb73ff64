"""Build tests/data/ua_labels/labels.tsv from public, labelled user-agent fixtures.

Every source, its version and licence, and how its labels are read, is in README.md beside
this file, with the commands that fetch the sources into SRC/<name>. Then:

    python tests/data/ua_labels/build.py SRC

crawler-user-agents comes from the installed package (its version is checked).

Output: one line per (source, user agent): `source \t label \t group \t heldout \t ua`,
label `human` or `bot`, group the source's own category (a fixture section, a Matomo
client type or bot category), heldout 1 when the UA is in the held-out view: not from a
source the classifier ships or was tuned on (Matomo's fixtures, crawler-user-agents), and
not an exact string of those or of uap-core's test files (uap-core's regexes are shipped too).
A UA that two sources label differently is left out and listed in conflicts.tsv.
"""

from __future__ import annotations

import json
import random
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path

import yaml

HERE = Path(__file__).parent
CRAWLER_USER_AGENTS_VERSION = "1.67.0"
# Sources the classifier ships patterns from or whose fixtures its rules were tuned on.
NOT_HELD_OUT = {"matomo", "crawler-user-agents"}
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

Row = tuple[str, str, str]  # label, group, ua

# UAs that two sources label differently, settled by hand (label, why). Any other conflict
# is left out of the set and listed in conflicts.tsv.
SETTLED = {
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Code/1.115.0 "
    "Chrome/142.0.7444.265 Electron/39.8.5 Safari/537.36":
        ("human", "VS Code's built-in browser (Electron) shows a page to its user"),
    "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Trae/1.107.1 "
    "Chrome/142.0.7444.235 Electron/39.2.7 Safari/537.36":
        ("human", "the Trae editor's built-in browser (Electron)"),
    "Mozilla/5.0 (Macintosh; U; Intel Mac OS X 10_5_6; en-us) AppleWebKit/528.16 (KHTML, like Gecko) "
    "Fluid/0.9.6 Safari/528.16":
        ("human", "Fluid wraps a site in its own macOS window: a person browsing"),
    "Mozilla/4.7 (compatible; OffByOne; Windows 2000) Webster Pro V3.4":
        ("human", "the Off By One browser"),
    "Mozilla/5.0 (X11; Linux x86_64) Miniature.io/6.0 AppleWebKit/537.36 (KHTML, like Gecko) "
    "QtWebEngine/5.12.4 Chrome/69.0.3497.128 Safari/537.36":
        ("bot", "Miniature.io is a screenshot service running QtWebEngine"),
    # woothee labels these by the platform in their UA; what sends them is a fetcher.
    "Mozilla/5.0 (Windows; U; Windows NT 6.0; en-US; aggregator VocusBot 0.4; +http://www.vocus.com/vnhs.html)":
        ("bot", "VocusBot, a news aggregator's crawler"),
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_6_8) AppleWebKit/534.50 (KHTML, like Gecko) Version/5.1 "
    "Instapaper/4.0 (+http://www.instapaper.com/)":
        ("bot", "Instapaper's read-later fetcher (Matomo files Pocket's as a bot too)"),
    "Girls/2.0 (livedoor Co.,Ltd.; Peachy 2.1; iPhone; RSS Version 2.0; +http://girls.livedoor.com/)":
        ("bot", "livedoor's news app fetching RSS: a feed reader"),
    # crawler-user-agents lists these two; isbot files them as legitimate UAs that bot lists
    # carry by mistake.
    "Mozilla/5.0 (Linux; Android 16; Pixel 10 Pro XL Build/CP1A.260305.018; wv) AppleWebKit/537.36 "
    "(KHTML, like Gecko) Version/4.0 Chrome/146.0.7680.174 Mobile Safari/537.36 MetaIAB Facebook":
        ("human", "Meta's in-app browser (IAB) in the Facebook app"),
    "Mozilla/5.0 (Linux; Android 15; CPH2557 Build/AP3A.240617.008; wv) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Version/4.0 Chrome/142.0.7444.142 Mobile Safari/537.36 Instagram 406.0.0.58.159 Android (35/15; 480dpi; "
    "1080x2400; OPPO; CPH2557; OP573DL1; mt6833; en_MY; 822918295; IABMV/1) NV/1":
        ("human", "Instagram's in-app browser on an OPPO phone"),
}

# Rows left out whatever their source says (pattern, why).
SKIPPED = [
    (re.compile(r"^User-Agent: "), "a fixture copy-paste artefact, never sent by a client"),
    (re.compile(r"MatomoTrackerSDK"), "an app's analytics SDK: a person's events, Matomo calls it a library"),
    (re.compile(r"AppleCoreMedia|SafariViewService"), "Apple's media and in-app Safari frameworks acting for a person"),
    (re.compile(r"^URL/Emacs"), "Emacs' URL library, also the eww browser's"),
    (re.compile(r"Transcoder|Mobile-Gateway|/pc2m/"), "transcoding proxies for feature phones"),
]


def _yaml(path: Path):  # type: ignore[no-untyped-def]
    return yaml.load(path.read_text(encoding="utf-8"), Loader=_LOADER)


def _clean(ua: object) -> str | None:
    if not isinstance(ua, str):
        return None
    ua = ua.strip()
    return ua if ua and "\n" not in ua and "\t" not in ua and "\r" not in ua else None


def matomo(root: Path) -> Iterator[Row]:
    """Matomo Device Detector's hand-labelled fixtures (device-detector wheel).

    human: client type `browser` on any device, or `mobile app` with a Mozilla/ UA (in-app
    webviews). bot: entries with a `bot` label, HTTP libraries and feed readers (podcast
    apps that Matomo files as feed readers included). Other apps and media players: no label.
    Humans are sampled: at most 30 per client name (covers niche browsers), 4,000 more at
    random (seed 5), and every human UA containing "bot" (CUBOT phones and the like)."""
    humans: dict[str, str] = {}
    bots: dict[str, str] = {}
    for f in sorted((root / "device_detector/tests/fixtures/upstream").glob("*.yml")):
        if f.name.startswith("clienthints"):
            continue
        for e in _yaml(f) or []:
            ua = _clean(e.get("user_agent"))
            if ua is None:
                continue
            client = e.get("client") or {}
            kind = client.get("type")
            if e.get("bot"):
                bots[ua] = "bot:" + (e["bot"].get("category") or "uncategorised")
            elif kind in ("library", "feed reader"):
                bots[ua] = kind
            elif kind == "browser" or (kind == "mobile app" and ua.startswith("Mozilla/")):
                humans.setdefault(ua, f"{kind}:{client.get('name')}")
    rnd = random.Random(5)
    by_name: dict[str, list[str]] = defaultdict(list)
    for ua, group in sorted(humans.items()):
        by_name[group].append(ua)
    keep = {ua for uas in by_name.values() for ua in rnd.sample(uas, min(30, len(uas)))}
    keep |= {ua for ua in humans if "bot" in ua.lower()}
    rest = sorted(set(humans) - keep)
    keep |= set(rnd.sample(rest, min(4000, len(rest))))
    yield from (("human", humans[ua], ua) for ua in sorted(keep))
    yield from (("bot", g, ua) for ua, g in sorted(bots.items()))


def crawler_user_agents() -> Iterator[Row]:
    """Every `instances` example of crawler-user-agents (all bots)."""
    from importlib.metadata import version

    import crawleruseragents

    assert version("crawler-user-agents") == CRAWLER_USER_AGENTS_VERSION, version("crawler-user-agents")
    for d in crawleruseragents.CRAWLER_USER_AGENTS_DATA:
        for ua in d.get("instances", []):
            if (ua := _clean(ua)) is not None:
                yield "bot", d["pattern"][:40], ua


def isbot(root: Path) -> Iterator[Row]:
    """isbot's fixtures: browsers.yml (human) and crawlers.yml (bot), keyed by client name.

    The `ZZZ ...` sections of browsers.yml are left out: they hold UAs isbot chooses not
    to flag (malformed strings, injection probes, 'insignificant bots'), not browsers."""
    for name, label in (("browsers.yml", "human"), ("crawlers.yml", "bot")):
        for group, uas in (_yaml(root / "fixtures" / name) or {}).items():
            if str(group).startswith("ZZZ"):
                continue
            for ua in uas or []:
                if (ua := _clean(ua)) is not None:
                    yield label, str(group)[:40], ua


def bowser(root: Path) -> Iterator[Row]:
    """bowser's acceptance list: platform type `bot` or a headless browser (PhantomJS,
    SlimerJS) is a bot, everything else a human."""
    for name, cases in (_yaml(root / "test/acceptance/useragentstrings.yml") or {}).items():
        for case in cases or []:
            ua = _clean(case.get("ua"))
            if ua is None:
                continue
            spec = case.get("spec") or {}
            bot = (spec.get("platform") or {}).get("type") == "bot" or name in ("PhantomJS", "SlimerJS")
            yield ("bot" if bot else "human"), str(name), ua


_WOOTHEE_BOT_MISC = {"HTTP Library", "RSSReader", "Windows RSSReader"}


def woothee(root: Path) -> Iterator[Row]:
    """woothee's testsets: category `crawler` and the HTTP libraries and RSS readers of
    `misc` are bots; pc, smartphone, mobilephone and appliance are humans."""
    for f in sorted((root / "testsets").glob("*.yaml")):
        for case in _yaml(f) or []:
            ua = _clean(case.get("target"))
            cat = case.get("category")
            if ua is None:
                continue
            if cat == "crawler" or (cat == "misc" and case.get("name") in _WOOTHEE_BOT_MISC):
                yield "bot", f"{cat}:{case.get('name')}", ua
            elif cat in ("pc", "smartphone", "mobilephone", "appliance"):
                yield "human", f"{cat}:{case.get('name')}", ua


_HEADLESS_NAMES = {"Chrome Headless", "PhantomJS"}


def ua_parser_js(root: Path) -> Iterator[Row]:
    """ua-parser-js 1.0.41's tests (MIT; the 2.x line is AGPL and not used): browser-test.json
    (human, except the headless browsers) and device-test.json (human where a device type
    is given)."""
    for case in json.loads((root / "test/browser-test.json").read_text()):
        if (ua := _clean(case.get("ua"))) is not None:
            name = case["expect"].get("name")
            yield ("bot" if name in _HEADLESS_NAMES else "human"), f"browser:{name}", ua
    for case in json.loads((root / "test/device-test.json").read_text()):
        kind = case["expect"].get("type")
        if (ua := _clean(case.get("ua"))) is not None and kind not in (None, "undefined"):
            yield "human", f"device:{kind}", ua


def fake_useragent(root: Path) -> Iterator[Row]:
    """fake-useragent's browsers.jsonl: browser UAs seen in real traffic (all human)."""
    for line in (root / "fake_useragent/data/browsers.jsonl").read_text().splitlines():
        d = json.loads(line)
        if (ua := _clean(d.get("useragent"))) is not None:
            yield "human", f"{d.get('type')}:{d.get('browser')}", ua


def uap_core_strings(root: Path) -> set[str]:
    """Every UA string in uap-core's test files: kept out of the held-out view."""
    out: set[str] = set()
    for f in [*sorted((root / "tests").glob("*.yaml")), *sorted((root / "test_resources").glob("*.yaml"))]:
        data = _yaml(f) or {}
        for case in data.get("test_cases", []) if isinstance(data, dict) else []:
            if (ua := _clean(case.get("user_agent_string"))) is not None:
                out.add(ua)
    return out


def main(src: Path) -> None:
    sources = {
        "matomo": matomo(src / "device-detector"),
        "crawler-user-agents": crawler_user_agents(),
        "isbot": isbot(src / "isbot"),
        "bowser": bowser(src / "bowser"),
        "woothee": woothee(src / "woothee"),
        "ua-parser-js": ua_parser_js(src / "ua-parser-js"),
        "fake-useragent": fake_useragent(src / "fake-useragent"),
    }
    rows: dict[tuple[str, str], tuple[str, str]] = {}  # (source, ua) -> (label, group)
    for name, it in sources.items():
        for label, group, ua in it:
            rows.setdefault((name, ua), (label, group))
    labels: dict[str, set[str]] = defaultdict(set)
    for (_, ua), (label, _) in rows.items():
        labels[ua].add(label)
    conflicts = {ua for ua, s in labels.items() if len(s) > 1 and ua not in SETTLED}
    seen_by_rules = {ua for (name, ua) in rows if name in NOT_HELD_OUT} | uap_core_strings(src / "uap-core")
    lines = []
    for (name, ua), (label, group) in sorted(rows.items()):
        if ua in conflicts or any(rx.search(ua) for rx, _ in SKIPPED):
            continue
        heldout = int(name not in NOT_HELD_OUT and ua not in seen_by_rules)
        label = SETTLED.get(ua, (label,))[0]
        lines.append(f"{name}\t{label}\t{group}\t{heldout}\t{ua}")
    (HERE / "labels.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    conflict_lines = sorted(f"{n}\t{rows[(n, ua)][0]}\t{rows[(n, ua)][1]}\t{ua}"
                            for (n, ua) in rows if ua in conflicts)
    (HERE / "conflicts.tsv").write_text("\n".join(conflict_lines) + "\n", encoding="utf-8")
    print(f"{len(lines)} labelled rows, {len(conflicts)} UAs left out as conflicts")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
