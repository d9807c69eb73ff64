"""Plausible's words for Tally's values, as ClickHouse expressions over `pageviews`.

Tally stores ua-parser families (`Mobile Safari`, `Mac OS X`), device classes
(`desktop`) and a referrer class (`search`, `direct`); Plausible's API answers
`Safari`, `Mac`, `Desktop`, `Google`, `Direct / None` and `(not set)`. Scripts
written for Plausible compare those strings, so the Stats API groups and filters
on the translated values. One table per dimension, here only.
"""

from __future__ import annotations

from tally.sinks.sql import quote

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
# Referrer -> source name, as Plausible's referrer parser names them. Looked up by the
# referrer's registrable domain (www.google.co.uk -> google.co.uk), then, for sites with
# many country domains, by its first significant part (google): two hash lookups per row.
SOURCE_DOMAINS = {
    "bing.com": "Bing", "duckduckgo.com": "DuckDuckGo", "baidu.com": "Baidu", "ecosia.org": "Ecosia",
    "qwant.com": "Qwant", "startpage.com": "Startpage", "brave.com": "Brave", "naver.com": "Naver",
    "seznam.cz": "Seznam", "ask.com": "Ask", "kagi.com": "Kagi", "sogou.com": "Sogou", "perplexity.ai": "Perplexity",
    "facebook.com": "Facebook", "fb.com": "Facebook", "t.co": "Twitter", "twitter.com": "Twitter", "x.com": "Twitter",
    "linkedin.com": "LinkedIn", "lnkd.in": "LinkedIn", "reddit.com": "Reddit", "instagram.com": "Instagram",
    "youtube.com": "Youtube", "tiktok.com": "TikTok", "ycombinator.com": "Hacker News", "threads.net": "Threads",
    "bsky.app": "Bluesky", "vk.com": "VKontakte", "weibo.com": "Sina Weibo", "telegram.org": "Telegram",
    "t.me": "Telegram", "whatsapp.com": "WhatsApp", "snapchat.com": "Snapchat", "quora.com": "Quora",
    "tumblr.com": "Tumblr",
}
SOURCE_NAMES = {"google": "Google", "yahoo": "Yahoo!", "yandex": "Yandex", "pinterest": "Pinterest",
                "mastodon": "Mastodon"}
DIRECT = "Direct / None"
NOT_SET = "(not set)"


def _array(values: list[str]) -> str:
    return "[" + ", ".join(quote(v) for v in values) + "]"


def _translate(column: str, table: dict[str, str]) -> str:
    """The column's value through `table`, and (not set) for what is empty afterwards."""
    mapped = f"transform({column}, {_array(list(table))}, {_array(list(table.values()))}, {column})"
    return f"if({mapped} = '', {quote(NOT_SET)}, {mapped})"


def _without_www(column: str) -> str:
    return f"if(startsWith({column}, 'www.'), substring({column}, 5), {column})"


def _source() -> str:
    host = "referrer_host"
    by_name = (f"transform(firstSignificantSubdomain({host}), {_array(list(SOURCE_NAMES))}, "
               f"{_array(list(SOURCE_NAMES.values()))}, {_without_www(host)})")
    named = (f"transform(cutToFirstSignificantSubdomain({host}), {_array(list(SOURCE_DOMAINS))}, "
             f"{_array(list(SOURCE_DOMAINS.values()))}, {by_name})")
    return (f"multiIf(ifNull(utm_source, '') != '', utm_source, "
            f"referrer_source IN ('direct', 'internal') OR {host} = '', {quote(DIRECT)}, {named})")


def _utm(column: str) -> str:
    return f"if(ifNull({column}, '') = '', {quote(NOT_SET)}, {column})"


# Stats API dimension -> ClickHouse expression over a `pageviews` row.
EXPRESSIONS: dict[str, str] = {
    "event:page": "path",
    "event:name": "event",
    "event:hostname": f"if(hostname = '', '(none)', {_without_www('hostname')})",
    "visit:source": _source(),
    "visit:referrer": (f"if(referrer_source IN ('direct', 'internal') OR referrer_host = '', {quote(DIRECT)}, "
                       f"{_without_www('referrer_host')})"),
    "visit:utm_source": _utm("utm_source"),
    "visit:utm_medium": _utm("utm_medium"),
    "visit:utm_campaign": _utm("utm_campaign"),
    "visit:utm_content": _utm("utm_content"),
    "visit:utm_term": _utm("utm_term"),
    "visit:browser": _translate("browser", BROWSERS),
    "visit:os": _translate("os", OPERATING_SYSTEMS),
    "visit:device": f"transform(device, {_array(list(DEVICES))}, {_array(list(DEVICES.values()))}, {quote(NOT_SET)})",
    # The width class tally.js sends as the prop `screen` with data-screen (the collector keeps
    # only Mobile, Tablet, Laptop or Desktop); (not set) on events sent without it.
    "visit:screen": f"if(props['screen'] = '', {quote(NOT_SET)}, props['screen'])",
}
# Dimensions the daily rollups leave out (sinks/rollups.py): the Stats API reads them from the
# raw rows. utm_content and utm_term are long-tail values (one per ad, one per search term)
# that would swell `daily_stats`, and `screen` lives in `props`, outside the fingerprint a
# rollup is checked against.
RAW_ONLY = frozenset({"visit:utm_content", "visit:utm_term", "visit:screen"})
# Dimensions an event has but its visit's `sessions` row does not (api/sql.py).
EVENT_ONLY = frozenset({"visit:screen"})
