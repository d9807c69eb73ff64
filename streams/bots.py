"""Bot and spam classification of one beacon. Pure functions plus an LRU cache by user agent.

The pattern data is maintained by others and comes from packages:

- `crawler-user-agents` (monperrus/crawler-user-agents): ~1,500 crawler patterns.
- `device-detector` (Matomo's Device Detector): its bot list `bots.yml` (~840 patterns,
  kept current by Matomo; AI agents, Google's special fetchers, scanners, monitors).
- `ua-parser` (uap-core): the browser family and device of a UA, and its `Spider` device
  class (uap-core's own bot patterns).

Both crawler lists are compiled into one Rust regex set through `ua-parser-rs` (already
installed by `ua-parser[regex]`), ~5 us per UA where Python's `re` needs ~2 ms for the same
alternation. Without ua-parser-rs we fall back to `re` (slow, still correct). A list pattern
only matches at the start of a token (Matomo's own rule), so `Fetch/` does not match inside
`MozacFetch/` nor `008/` inside an app's hex id.

On top of that, *shape* rules of our own, because lists always lag behind new bots: strong
ones (bot words, contact URLs) and weak ones (HTTP-library names, feed/monitor words, a client
with no platform token at all). Words match at token starts and never inside the device-model
slot of mobile UAs (CUBOT phones, "M BOT 551", Android build ids like S1RSS32).

Order (see `explain`): empty, headless, the human allowlist (HUMAN_FAMILIES and friends, by
ua-parser's verdict), strong shape rules, the lists, weak signals (weak shape rules, uap-core's
Spider class). A UA of an allowlisted family is dropped by a strong rule, or by a list hit
*plus* a weak signal (a second signal): in-app webviews append their app's name, which the
lists also use for that app's link-preview bot. Any other UA is dropped by any one signal.

A bot's verdict names its drop reason (schemas/reasons.py): empty_user_agent, headless or bot.
tests/data/ua_labels holds the labelled set.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files

import crawleruseragents
from tally.schemas.reasons import DropReason

# Automation frameworks and headless browsers announce themselves in the UA.
_HEADLESS = re.compile(
    r"HeadlessChrome|PhantomJS|SlimerJS|Puppeteer|Playwright|Selenium|WebDriver|HtmlUnit"
    r"|Nightmare|CasperJS|Zombie\.js|jsdom|Cypress|Splash|Chrome-Lighthouse|Electron/[\d.]+ .*headless",
    re.IGNORECASE)

# Human browsers by ua-parser's verdict: families (or devices) whose real UAs carry tokens
# that look like bot signals. Each entry says why.
_IN_APP = "in-app browser: the app appends its own name, which crawler lists also use for its link-preview bot"
HUMAN_FAMILIES: dict[str, str] = {
    "Chrome Mobile WebView": "Android webview ('; wv)'): " + _IN_APP,
    "Mobile Safari UI/WKWebView": "iOS webview: " + _IN_APP,
    "Facebook": _IN_APP,
    "Facebook Messenger": _IN_APP,
    "Instagram": _IN_APP,
    "Pinterest": _IN_APP,
    "Twitter": _IN_APP,
    "Snapchat": _IN_APP,
    "LINE": _IN_APP,
    "KakaoTalk": _IN_APP,
    "WeChat Browser": _IN_APP,
    "TikTok": _IN_APP,
    "Viber": _IN_APP,
    "Electron": "desktop app on Electron (an editor's built-in browser, a chat app): adds its own name token",
    "Slack Desktop Client": "Slack's Electron app: adds its own tokens",
    "Qt Web Engine": "desktop app on Qt's Chromium shell: adds its own name token",
    "Fluid": "macOS site-specific browser: a person browsing one site in its own window",
    "Sogou Explorer": "Sogou's browser; crawler lists name 'Sogou' for Sogou's spider",
    "Lynx": "text browser: libwww-FM is its own HTTP library, not a script's",
    "NCSA Mosaic": "the first graphical browser: carries its libwww",
    "Links": "text browser",
    "ELinks": "text browser",
    "w3m": "text browser",
}
# Webview families count only on a webview's shape (a Mozilla/ UA): ua-parser also files
# some apps' own HTTP clients under them ("NewsBlur iPad App v3.6").
_WEBVIEWS = {"Chrome Mobile WebView", "Mobile Safari UI/WKWebView"}
# Devices by ua-parser's verdict: consoles run their own HTTP stack (libhttp) under the browser.
HUMAN_DEVICES: dict[str, str] = {
    "PlayStation": "Sony's consoles: their browser and apps carry the console's libhttp token",
}
# Browsers ua-parser does not name, by their product token at the start of the UA.
HUMAN_PRODUCTS: dict[str, str] = {
    "w3m": "text browser",
    "Links": "text browser",
    "ELinks": "text browser",
    "amaya": "W3C's browser/editor: carries libwww",
    "VMS_Mosaic": "Mosaic for OpenVMS: carries libwww",
    "Voyager3": "Amiga browser Voyager; uap-core's Spider pattern '^voyager' is an old crawler's",
    "MozacFetch": "Firefox for Android's own fetch client (Mozilla Android Components)",
}
_PRODUCT = re.compile(r"^([A-Za-z0-9_]+)[/ (]")

# Mobile UAs carry a device model ("Android 6.0; M BOT 551 Build/...") and in-app webviews
# carry device codenames ("...; HTC; HTC Desire 22 pro; htc_botdugls; ..."); neither our
# words nor the lists look inside those slots.
_ANDROID_MODEL = re.compile(r"(Android [^;)]*;(?: [a-z]{2}[-_][a-zA-Z]{2};)?)[^;)]*(?=[;)])", re.I)
_APP_DEVICE = re.compile(r"(Android \()[^)]*\)")

# Strong: a bot names itself, or leaves a contact (URL, e-mail) or an injection probe.
_STRONG = (r"bot\b|bot[/_-]|robot|crawl|spider|scrap|slurp|archiver|synthetic|googleweblight|googlemessages"
           r"|https?://|\+http|[\w.-]+@[\w-]+\.[a-z]{2,}|\$\{|\(select |load_file\(|pg_sleep\(")
# Weak: HTTP libraries and tool words at the start of a token (CamScanner, HotJava,
# Build/S1RSS32 are not matches), `rss` ending one, a domain name, or a UA glued after
# another client's name ("Thumbor/6.7.5, Mozilla/5.0 ...").
_WEAK_WORDS = (r"fetcher|monitor|checker|scanner|validator|preview|wget|curl/|python|java/\d|go-http|okhttp"
               r"|axios|node-fetch|libwww|httpclient|http-client|guzzle|ruby|perl|php/|http_request|aiohttp"
               r"|httpx|scrapy|postman|insomnia|feed|rss|www\.|Google-|Transcoder|Observatory|Diagnostics"
               r"|Inspector|Agent\b|Measurement|grpc|http-kit|clamav|cryptoapi|Microsoft-CryptoAPI|cursor/|podcast|downcast/")
_WEAK_ELSEWHERE = r"rss\b|[a-z]-http/|\.com\b|[a-z0-9]\.net\b|[a-z0-9]\.org\b|[a-z0-9]\.io\b|^[^()]*, ?Mozilla/"
_STRONG_RX = re.compile(_STRONG, re.I)
_WEAK_RX = re.compile(rf"(?:^|[^a-z0-9])({_WEAK_WORDS})|{_WEAK_ELSEWHERE}", re.I)
_BROWSER_SHAPE = re.compile(r"^Mozilla/5\.0 \((Windows|Macintosh|X11|Linux|iPhone|iPad|iPod|Android|Mobile|Tablet)"
                            r"[^)]*\) (AppleWebKit/[\d.]+|Gecko/\d+)")
# Any platform token: old phones and niche browsers ua-parser does not know still carry one.
_PLATFORM = re.compile(r"Android|Linux|Windows|Win(95|98|NT|32|64)|Mac|iPhone|iPad|iOS|MIDP|Mobile|Browser"
                       r"|Gecko|KHTML|AppleWebKit|Symbian|BlackBerry|Series|Opera|Darwin|CFNetwork|Dalvik"
                       r"|Amiga|MorphOS|BeOS|Haiku|RISC OS|PalmOS|Inferno|Plan9|OpenVMS|PlayStation|Nintendo"
                       r"|\bwin(?:7|8|10|11)\b|Roku|DoCoMo|KDDI|SoftBank|Vodafone|DDIPOCKET|WILLCOM",
                       re.I)
_BROWSER_NAME = re.compile(r"(Chrome|CriOS|Firefox|FxiOS|Safari|Edg|OPR|Version)/[\d.]+")


@dataclass(frozen=True)
class Verdict:
    bot: bool
    reason: DropReason | None  # empty_user_agent, headless or bot; None for a browser
    rule: str = ""  # what dropped it: a crawler-user-agents pattern, "matomo:<bot>", "spider", "shape:..."


# Token start, as Matomo's Device Detector bounds its own bot patterns.
_BOUND = r"(?:^|[^A-Za-z0-9_-]|[^A-Za-z0-9-]_)"


# Matomo's lists that name automated clients: bots, HTTP libraries, feed and podcast readers.
MATOMO_LISTS = {"matomo": "bots.yml", "matomo-library": "client/libraries.yml",
                "matomo-feed": "client/feed_readers.yml"}


def matomo_patterns(path: str) -> list[tuple[str, str]]:
    """(regex, name) of every entry of one of device-detector's lists, read line by line: a
    YAML parser costs ~0.5 s at start (tests/test_bots.py checks this reader against PyYAML)."""
    text = files("device_detector").joinpath("regexes/upstream", path).read_text(encoding="utf-8")
    out: list[tuple[str, str]] = []
    line_rx = re.compile(r"^(- regex|  name): (?:'((?:[^']|'')*)'|\"([^\"]*)\"|([^'\"\s].*?))\s*$", re.M)
    pattern = None
    for m in line_rx.finditer(text):
        value = m.group(2).replace("''", "'") if m.group(2) is not None else m.group(3) or m.group(4)
        if m.group(1) == "- regex":
            pattern = value
        elif pattern is not None:
            out.append((pattern, value))
            pattern = None
    return out


_LOOKAROUND = re.compile(r"\(\?<?[=!]")


def _compiles_in_rust(rx: str) -> bool:
    import ua_parser_rs

    try:
        ua_parser_rs.DeviceExtractor([(rx, None, "x", None, None)])
        return True
    except Exception:
        return False


def _list_matcher() -> Callable[[str], str | None]:
    """One matcher over all crawler lists: the rule name of the first pattern that matches."""
    entries = [(f"{_BOUND}(?:{d['pattern']})", d["pattern"]) for d in crawleruseragents.CRAWLER_USER_AGENTS_DATA]
    for prefix, path in MATOMO_LISTS.items():
        entries += [(f"{_BOUND}(?i:{p})", f"{prefix}:{name}") for p, name in matomo_patterns(path)]
    try:
        import ua_parser_rs

        # A few of Matomo's patterns use look-around, which the Rust engine lacks: left out.
        usable = [(rx, name) for rx, name in entries if not _LOOKAROUND.search(rx)]
        try:
            ex = ua_parser_rs.DeviceExtractor([(rx, None, str(i), None, None) for i, (rx, _) in enumerate(usable)])
        except Exception:  # another construct the engine rejects: find it pattern by pattern (slow)
            usable = [(rx, name) for rx, name in usable if _compiles_in_rust(rx)]
            ex = ua_parser_rs.DeviceExtractor([(rx, None, str(i), None, None) for i, (rx, _) in enumerate(usable)])

        def match(ua: str) -> str | None:
            m = ex.extract(ua)
            return usable[int(m.family)][1] if m else None
    except ImportError:  # no ua-parser-rs: slower pure-Python path over the patterns `re` accepts
        compiled = []
        for rx, name in entries:
            try:
                compiled.append((re.compile(rx), name))
            except re.error:
                continue

        def match(ua: str) -> str | None:
            return next((name for rx, name in compiled if rx.search(ua)), None)
    return match


_match_list = _list_matcher()


def _prefilter(alternatives: str, rx: re.Pattern[str]) -> Callable[[str], re.Match[str] | None]:
    """A fast 'might rx match?' test: rx's plain alternatives as one Rust regex set.

    Python's `re` tries every alternative at every position (~50-150 us on a browser UA);
    the same alternatives as one Rust regex set (ua-parser-rs) answer in ~1-2 us. It is only
    a pre-check: a hit is confirmed by rx itself, so verdicts and rule names stay rx's."""
    try:
        import ua_parser_rs

        ex = ua_parser_rs.DeviceExtractor([(f"(?i){a}", None, "x", None, None) for a in alternatives.split("|")])
    except Exception:
        return rx.search

    def search(ua: str) -> re.Match[str] | None:
        return rx.search(ua) if ex.extract(ua) is not None else None
    return search


_headless_search = _prefilter(_HEADLESS.pattern, _HEADLESS)
_strong_search = _prefilter(_STRONG, _STRONG_RX)
_weak_search = _prefilter(f"{_WEAK_WORDS}|{_WEAK_ELSEWHERE}", _WEAK_RX)


def _agent(ua: str) -> tuple[str, str]:
    """ua-parser's verdict: (user-agent family, device family), "Other" when unknown."""
    from ua_parser import parse_device, parse_user_agent

    agent, device = parse_user_agent(ua), parse_device(ua)
    return (agent.family if agent else "Other"), (device.family if device else "Other")


def _human(ua: str, family: str, device: str) -> str | None:
    """The allowlist entry that makes this UA a human browser, as 'name: reason'."""
    if family in HUMAN_FAMILIES and (family not in _WEBVIEWS or ua.startswith("Mozilla/")):
        return f"{family}: {HUMAN_FAMILIES[family]}"
    for prefix, reason in HUMAN_DEVICES.items():
        if device.startswith(prefix):
            return f"{device}: {reason}"
    m = _PRODUCT.match(ua)
    if m and m.group(1) in HUMAN_PRODUCTS:
        return f"{m.group(1)}: {HUMAN_PRODUCTS[m.group(1)]}"
    return None


def _weak_rule(ua: str, visible: str, family: str, device: str) -> str | None:
    m = _weak_search(visible)
    if m:
        word = (m.group(1) or m.group(0)).lower()
        return "shape:concatenated" if word.endswith("mozilla/") else f"shape:{word}"
    if family == "Other" and device in ("Other", "Spider") and not _PLATFORM.search(ua) \
            and not (_BROWSER_SHAPE.match(ua) and _BROWSER_NAME.search(ua)):
        return "shape:unknown-client"
    return None


Trace = list[tuple[str, str]]


def _decide(ua: str, trace: Trace | None) -> Verdict:
    def step(name: str, result: str) -> None:
        if trace is not None:
            trace.append((name, result))

    ua = ua.strip()
    if not ua:
        step("empty user agent", "yes")
        return Verdict(True, DropReason.EMPTY_USER_AGENT)
    m = _headless_search(ua)
    step("headless marker", m.group(0) if m else "none")
    if m:
        step("verdict", "bot (headless)")
        return Verdict(True, DropReason.HEADLESS, "headless")
    family, device = _agent(ua)
    human = _human(ua, family, device)
    step("human allowlist", f"yes, {human}" if human else f"no (ua-parser: family {family!r}, device {device!r})")
    visible = _APP_DEVICE.sub(r"\1", _ANDROID_MODEL.sub(r"\1", ua))
    m = _strong_search(visible)
    step("strong shape rules", f"shape:{m.group(0).lower()}" if m else "none")
    if m:
        step("verdict", f"bot (shape:{m.group(0).lower()}): a strong signal drops even an allowlisted browser")
        return Verdict(True, DropReason.BOT, f"shape:{m.group(0).lower()}")
    hit = _match_list(visible)
    step("crawler lists", hit or "none")
    # uap-core's generic Spider patterns match inside words ("Caboto", "Voyager3"): a weak signal.
    weak = _weak_rule(ua, visible, family, device) or ("spider" if device == "Spider" else None)
    step("weak signals", weak or "none")
    if human and hit and weak:
        verdict, why = Verdict(True, DropReason.BOT, hit), f"{weak} confirms {hit} on an allowlisted browser"
    elif human:
        verdict = Verdict(False, None)
        why = f"allowlisted browser with one signal only ({hit or weak})" if hit or weak else "allowlisted browser"
    elif hit or weak:
        verdict, why = Verdict(True, DropReason.BOT, hit or weak or ""), "one signal is enough outside the allowlist"
    else:
        verdict, why = Verdict(False, None), "no signal"
    step("verdict", f"{'bot (' + verdict.rule + ')' if verdict.bot else 'browser'}: {why}")
    return verdict


@lru_cache(maxsize=65536)
def classify_ua(ua: str) -> Verdict:
    """Is this user agent a bot, and why? Cached per UA string (traffic repeats UAs heavily)."""
    return _decide(ua, None)


def explain(ua: str) -> tuple[Verdict, Trace]:
    """The verdict and each step tried on the way, as (step, result) pairs."""
    trace: Trace = []
    return _decide(ua, trace), trace
