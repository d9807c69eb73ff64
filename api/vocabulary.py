"""Plausible's words for Tally's values, as ClickHouse expressions over `pageviews`.

Tally stores ua-parser families (`Mobile Safari`, `Mac OS X`), device classes
(`desktop`) and a referrer class (`search`, `direct`); Plausible's API answers
`Safari`, `Mac`, `Desktop`, `Google`, `Direct / None` and `(not set)`. Scripts
written for Plausible compare those strings, so the Stats API groups and filters
on the translated values. One table per dimension, here only.
"""

from __future__ import annotations

# ua-parser browser family -> Plausible's browser name (its ingestion folds the mobile variants).
BROWSERS = {
    "Mobile Safari": "Safari", "Mobile Safari UI/WKWebView": "Safari", "Chrome Mobile": "Chrome",
    "Chrome Mobile iOS": "Chrome", "Chrome Mobile WebView": "Mobile App", "Firefox Mobile": "Firefox",
    "Firefox iOS": "Firefox", "Edge": "Microsoft Edge", "Edge Mobile": "Microsoft Edge",
    "Opera Mobile": "Opera", "Opera Mini": "Opera", "Samsung Internet": "Samsung Browser",
    "Yandex Browser Lite": "Yandex Browser", "Other": "",
}
# ua-parser OS family -> Plausible's operating system name.
OPERATING_SYSTEMS = {"Mac OS X": "Mac", "macOS": "Mac", "Linux": "GNU/Linux", "ChromeOS": "Chrome OS", "Other": ""}
DEVICES = {"desktop": "Desktop", "mobile": "Mobile", "tablet": "Tablet"}
# Referrer host -> source name, as Plausible's referrer parser names them. A pattern ending
# in "." matches any top-level domain (google.de, google.co.uk); others match the host or
# any subdomain of it.
SOURCES = (
    ("google.", "Google"), ("bing.com", "Bing"), ("duckduckgo.com", "DuckDuckGo"), ("yahoo.", "Yahoo!"),
    ("yandex.", "Yandex"), ("baidu.com", "Baidu"), ("ecosia.org", "Ecosia"), ("qwant.com", "Qwant"),
    ("startpage.com", "Startpage"), ("search.brave.com", "Brave"), ("naver.com", "Naver"),
    ("seznam.cz", "Seznam"), ("ask.com", "Ask"), ("kagi.com", "Kagi"), ("sogou.com", "Sogou"),
    ("perplexity.ai", "Perplexity"), ("facebook.com", "Facebook"), ("fb.com", "Facebook"),
    ("t.co", "Twitter"), ("twitter.com", "Twitter"), ("x.com", "Twitter"), ("linkedin.com", "LinkedIn"),
    ("lnkd.in", "LinkedIn"), ("reddit.com", "Reddit"), ("instagram.com", "Instagram"),
    ("youtube.com", "Youtube"), ("pinterest.", "Pinterest"), ("tiktok.com", "TikTok"),
    ("news.ycombinator.com", "Hacker News"), ("threads.net", "Threads"), ("bsky.app", "Bluesky"),
    ("mastodon.", "Mastodon"), ("vk.com", "VKontakte"), ("weibo.com", "Sina Weibo"),
    ("telegram.org", "Telegram"), ("t.me", "Telegram"), ("whatsapp.com", "WhatsApp"),
    ("snapchat.com", "Snapchat"), ("quora.com", "Quora"), ("tumblr.com", "Tumblr"),
)
DIRECT = "Direct / None"
NOT_SET = "(not set)"


def _q(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _array(values: list[str]) -> str:
    return "[" + ", ".join(_q(v) for v in values) + "]"


def _translate(column: str, table: dict[str, str]) -> str:
    """The column's value through `table`, and (not set) for what is empty afterwards."""
    mapped = f"transform({column}, {_array(list(table))}, {_array(list(table.values()))}, {column})"
    return f"if({mapped} = '', {_q(NOT_SET)}, {mapped})"


def _host_matches(host: str, pattern: str) -> str:
    if pattern.endswith("."):
        regex = "(^|\\.)" + pattern.replace(".", "\\.")  # (^|\.)google\.  (_q escapes the backslashes)
        return f"match({host}, {_q(regex)})"
    return f"({host} = {_q(pattern)} OR endsWith({host}, {_q('.' + pattern)}))"


def _source() -> str:
    host = "referrer_host"
    named = ", ".join(f"{_host_matches(host, p)}, {_q(name)}" for p, name in SOURCES)
    return (f"multiIf(ifNull(utm_source, '') != '', utm_source, "
            f"referrer_source IN ('direct', 'internal') OR {host} = '', {_q(DIRECT)}, "
            f"{named}, replaceRegexpOne({host}, '^www\\\\.', ''))")


def _utm(column: str) -> str:
    return f"if(ifNull({column}, '') = '', {_q(NOT_SET)}, {column})"


# Stats API dimension -> ClickHouse expression over a `pageviews` row.
EXPRESSIONS: dict[str, str] = {
    "event:page": "path",
    "event:name": "event",
    "event:hostname": "if(hostname = '', '(none)', replaceRegexpOne(hostname, '^www\\\\.', ''))",
    "visit:source": _source(),
    "visit:referrer": (f"if(referrer_source IN ('direct', 'internal') OR referrer_host = '', {_q(DIRECT)}, "
                       "replaceRegexpOne(referrer_host, '^www\\\\.', ''))"),
    "visit:utm_source": _utm("utm_source"),
    "visit:utm_medium": _utm("utm_medium"),
    "visit:utm_campaign": _utm("utm_campaign"),
    "visit:browser": _translate("browser", BROWSERS),
    "visit:os": _translate("os", OPERATING_SYSTEMS),
    "visit:device": f"transform(device, {_array(list(DEVICES))}, {_array(list(DEVICES.values()))}, {_q(NOT_SET)})",
}
