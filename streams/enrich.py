"""Enrichment of one beacon into a pageview. Pure functions: no Kafka, no I/O.

Expensive lookups are cached by their input: everything derived from the user agent
(bot verdict, browser, OS, device class) is computed once per distinct UA string.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from functools import lru_cache
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tally.streams.bots import Verdict, classify_ua

VISITOR_DIGEST_BYTES = 8


def visitor_ids(salt: bytes, keys: Iterable[tuple[bytes, bytes, bytes]]) -> list[int]:
    """The visitor id of each (site, IP pseudonym, user agent), given as UTF-8 bytes: the 64-bit
    keyed BLAKE2b of the three joined by NUL, under the period's salt, as a signed long.

    The one definition of the visitor hash (both stage-1 paths use it). The keyed state is set
    up once per call and copied per key: setting the key up costs more than hashing."""
    new = hashlib.blake2b(key=salt, digest_size=VISITOR_DIGEST_BYTES).copy
    join, from_bytes = b"\x00".join, int.from_bytes
    out = []
    append = out.append
    for key in keys:
        h = new()
        h.update(join(key))
        append(from_bytes(h.digest(), "big", signed=True))
    return out


def visitor_id(salt: bytes, site: str, ip_pseudonym: str, user_agent: str) -> int:
    return visitor_ids(salt, ((site.encode(), ip_pseudonym.encode(), user_agent.encode()),))[0]


@dataclass(frozen=True)
class AgentInfo:
    verdict: Verdict
    browser: str
    os: str
    device: str  # desktop, mobile, tablet or other


_DESKTOP_OS = {"Windows", "Mac OS X", "macOS", "Linux", "Ubuntu", "Chrome OS", "ChromeOS", "Fedora",
               "Debian", "FreeBSD", "OpenBSD", "Linux Mint", "Arch Linux"}


def _device_class(ua: str, os_family: str, device_family: str) -> str:
    if device_family == "iPad" or "Tablet" in ua or "iPad" in ua:
        return "tablet"
    if os_family in ("iOS", "Android", "Windows Phone", "KaiOS", "BlackBerry OS", "Symbian OS"):
        # Android tablets are the Android UAs without "Mobile" (Google's own guidance).
        return "tablet" if os_family == "Android" and "Mobile" not in ua else "mobile"
    if os_family in _DESKTOP_OS:
        return "desktop"
    return "other"


@lru_cache(maxsize=65536)
def agent_info(ua: str) -> AgentInfo:
    """Bot verdict plus browser/OS/device class of a user agent; cached per UA string."""
    verdict = classify_ua(ua)
    if verdict.bot:
        return AgentInfo(verdict, "", "", "")
    from ua_parser import parse

    r = parse(ua)
    browser = r.user_agent.family if r.user_agent else "Other"
    os_family = r.os.family if r.os else "Other"
    device = _device_class(ua, os_family, r.device.family if r.device else "")
    return AgentInfo(verdict, browser, os_family, device)


SEARCH = ("google.", "bing.com", "duckduckgo.com", "yahoo.", "yandex.", "baidu.com", "ecosia.org",
          "qwant.com", "startpage.com", "search.brave.com", "naver.com", "seznam.cz", "ask.com",
          "kagi.com", "sogou.com", "so.com", "perplexity.ai")
SOCIAL = ("facebook.com", "fb.com", "t.co", "twitter.com", "x.com", "linkedin.com", "lnkd.in",
          "reddit.com", "instagram.com", "youtube.com", "pinterest.", "tiktok.com", "news.ycombinator.com",
          "threads.net", "bsky.app", "mastodon.", "vk.com", "weibo.com", "telegram.org", "t.me",
          "whatsapp.com", "snapchat.com", "quora.com", "tumblr.com")


def _host_matches(host: str, suffixes: tuple[str, ...]) -> bool:
    for s in suffixes:
        if s.endswith("."):  # "google." matches google.com, google.co.uk, www.google.de
            if host.startswith(s) or f".{s}" in host:
                return True
        elif host == s or host.endswith("." + s):
            return True
    return False


@lru_cache(maxsize=65536)
def referrer_source(ref_host: str, page_host: str) -> str:
    """direct, internal, search, social or other."""
    if not ref_host:
        return "direct"
    if page_host and (ref_host == page_host or ref_host.removeprefix("www.") == page_host.removeprefix("www.")):
        return "internal"
    if _host_matches(ref_host, SEARCH):
        return "search"
    if _host_matches(ref_host, SOCIAL):
        return "social"
    return "other"


@lru_cache(maxsize=65536)
def normalize_path(path: str) -> tuple[str, str, dict[str, list[str]]]:
    """(hostname, path, query) of a path or URL: no query string or fragment, no repeated or
    trailing slashes. Cached (pages repeat); callers must not modify the returned query."""
    try:
        parts = urlsplit(path)
    except ValueError:  # e.g. an unbalanced "[" in a host: keep it as a path, never crash on it
        parts = urlsplit("/" + path.split("?", 1)[0].split("#", 1)[0].replace(":", "%3A").replace("[", "%5B"))
    clean = parts.path or "/"
    while "//" in clean:
        clean = clean.replace("//", "/")
    if len(clean) > 1 and clean.endswith("/"):
        clean = clean.rstrip("/") or "/"
    if not clean.startswith("/"):
        clean = "/" + clean
    query = parse_qs(parts.query) if "utm_" in parts.query else {}
    return (parts.hostname or ""), clean, query


# The UTM parameters a pageview keeps, in the pageview record's order; each value is the
# parameter's first occurrence, cut to UTM_MAX characters (docs/privacy.md).
UTM_FIELDS = ("utm_source", "utm_medium", "utm_campaign", "utm_content", "utm_term")
UTM_MAX = 200


def utm_values(query: dict[str, list[str]]) -> tuple[str | None, ...]:
    """The UTM_FIELDS values of a page URL's query (normalize_path); None when absent."""
    return tuple(v[0][:UTM_MAX] if v else None for v in map(query.get, UTM_FIELDS))


@lru_cache(maxsize=65536)
def referrer_host(referrer: str | None) -> str:
    if not referrer:
        return ""
    try:
        return (urlsplit(referrer).hostname or "").lower()
    except ValueError:
        return ""


def is_spam_referrer(host: str, spam: frozenset[str]) -> bool:
    """True when the referrer host or one of its parent domains is on the spam list."""
    if not host or not spam:
        return False
    parts = host.split(".")
    return any(".".join(parts[i:]) in spam for i in range(len(parts) - 1))


def enrich(beacon: dict[str, Any], salt: bytes, info: AgentInfo, keep_user_agent: bool = False) -> dict[str, Any]:
    """The pageview record (schema pageview_batch item) of an accepted beacon. The IP pseudonym
    is used for the visitor hash and then left behind."""
    host, path, query = normalize_path(beacon["path"])
    site = beacon["site"]
    page_host = host or site
    ref_host = referrer_host(beacon.get("referrer"))
    ua = beacon.get("user_agent") or ""

    utms = utm_values(query)
    return {
        "event_id": beacon["event_id"],
        "received_at": beacon["received_at"],
        "site": site,
        "hostname": page_host,
        "path": path,
        "event": beacon.get("event") or "pageview",
        "visitor_id": visitor_id(salt, site, beacon.get("ip_pseudonym") or "", ua),
        "referrer_host": ref_host,
        "referrer_source": referrer_source(ref_host, page_host),
        **dict(zip(UTM_FIELDS, utms, strict=True)),
        "browser": info.browser,
        "os": info.os,
        "device": info.device,
        "user_agent": ua if keep_user_agent else None,
        "props": beacon.get("props") or {},
        "country": beacon.get("country") or "",
    }
