"""Data minimisation at the edge: what a beacon may carry before it reaches Kafka.

Applied by the collector to every beacon, from tally.js, Plausible's tracker or any
other client, so what the tracker already trims is enforced for all of them:
- the path keeps the pathname and the allowlisted query parameters (TALLY_QUERY_PARAMS,
  `utm_*` by default) whose values are not personal data; the fragment and `;params`
  (`;jsessionid=...`) are removed (for a hash-routed site, parse.py first moves the
  fragment's route into the path with `hash_route`, tally.js's data-hash rule); a segment that is an email, a UUID, a long hex or
  base64 token, a secret, a card number, an IBAN, an IP literal or a phone number (see
  tally.schemas.sensitive), or matches TALLY_PATH_REDACT_PATTERNS, becomes `:kind`
  (`/users/:email/orders/:uuid`);
- the referrer keeps its origin only (`https://news.example`);
- props keep the keys allowlisted for the site (TALLY_PROPS_ALLOWLIST) whose values are
  short and not personal data; every other prop is dropped and counted by reason. The
  reserved `tally:` props (an engagement event's scroll depth and engaged time) are kept:
  only the parser sets them, as integers. The props of the tracker's own extensions
  (docs/tracker.md) are kept for every site, each cut by its own rule: `url` to its origin
  and minimised path, `path` as a path, `screen` only as one of the four width classes.
Event names are checked where the body is parsed (parse.py: a 400 naming the field).
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from collections.abc import Callable
from functools import lru_cache
from urllib.parse import unquote, urlsplit, urlunsplit

from tally.schemas.engagement import RESERVED_PREFIX
from tally.schemas.reasons import DropReason
from tally.schemas.sensitive import kind, sensitive

from tally.config import Settings

MAX_PROP_VALUE = 100  # characters; longer values are free text
SCREEN_CLASSES = frozenset({"Mobile", "Tablet", "Laptop", "Desktop"})
_CACHE = 65536


def redact_segment(segment: str, extra: tuple[re.Pattern[str], ...] = ()) -> str:
    """The segment, or `:kind` when it is personal data, a secret or an identifier-like token."""
    if not segment:
        return segment
    decoded = unquote(segment)
    found = kind(decoded)
    if found is None and any(p.search(decoded) for p in extra):
        found = "redacted"
    return f":{found}" if found else segment


def _query_filter(patterns: tuple[str, ...]) -> re.Pattern[str]:
    if not patterns:
        return re.compile(r"(?!)")  # matches nothing
    return re.compile("|".join(fnmatch.translate(p) for p in patterns))


class Minimiser:
    def __init__(self, settings: Settings) -> None:
        self._query_keys = _query_filter(settings.query_params)
        self._extra = tuple(settings.path_redact_patterns)
        self._props = settings.props_allowlist
        self.path = lru_cache(maxsize=_CACHE)(self._path)
        self.referrer = lru_cache(maxsize=_CACHE)(referrer_origin)
        # The extensions' props (tally.outbound.js, tally.downloads.js, tally('404'),
        # data-screen): value -> kept value, or None to drop it as unsafe.
        self._builtin: dict[str, Callable[[str], str | None]] = {
            "url": self._url, "path": self.path, "screen": lambda v: v if v in SCREEN_CLASSES else None}

    def _path(self, raw: str) -> str:
        """Pathname plus the allowed query parameters of a path or a full URL."""
        if raw.startswith(("http://", "https://")):
            try:
                parts = urlsplit(raw)
            except ValueError:
                return "/"
            path, query = parts.path, parts.query
        else:
            path, _, query = raw.partition("#")[0].partition("?")
        segments = [redact_segment(s.partition(";")[0], self._extra) for s in path.split("/")]
        clean = "/".join(segments)
        if not clean.startswith("/"):
            clean = "/" + clean
        kept = [pair for pair in query.split("&") if pair and self._keep_param(pair)]
        return clean + ("?" + "&".join(kept) if kept else "")

    def _url(self, raw: str) -> str | None:
        """An http(s) link's origin and minimised pathname: never its query or fragment."""
        origin = self.referrer(raw)
        if origin is None or not origin.startswith(("http://", "https://")):
            return None
        return origin + self.path(urlsplit(raw.strip()).path)

    def _keep_param(self, pair: str) -> bool:
        key, _, value = pair.partition("=")
        key, value = unquote(key), unquote(value.replace("+", " "))
        return (self._query_keys.fullmatch(key) is not None and len(value) <= MAX_PROP_VALUE
                and sensitive(value) is None and not any(p.search(value) for p in self._extra))

    def props(self, site: str, props: dict[str, str]) -> tuple[dict[str, str], Counter[DropReason]]:
        """The props this site may keep, and the count of dropped ones by reason."""
        dropped: Counter[DropReason] = Counter()
        if not props:
            return props, dropped
        allowed = self._props.get(site, frozenset()) | self._props.get("*", frozenset())
        kept: dict[str, str] = {}
        for key, value in props.items():
            if key.startswith(RESERVED_PREFIX):
                kept[key] = value
            elif (rule := self._builtin.get(key)) is not None:
                value = rule(value)
                if value is None:
                    dropped[DropReason.PROP_UNSAFE_VALUE] += 1
                else:
                    kept[key] = value
            elif key not in allowed:
                dropped[DropReason.PROP_NOT_ALLOWED] += 1
            elif len(value) > MAX_PROP_VALUE or sensitive(value) is not None or "://" in value \
                    or any(p.search(value) for p in self._extra):
                dropped[DropReason.PROP_UNSAFE_VALUE] += 1
            else:
                kept[key] = value
        return kept, dropped


def hash_route(url: str) -> str:
    """`url` (a path or a full URL) with its fragment's route in the path, for hash-routed sites
    (tally.js's data-hash, Plausible's `h: 1`; tally.js does the same in the browser).

    `/app/?utm_source=x#!/orders/42?tab=2` -> `/app/orders/42?utm_source=x`: a leading `!` and
    `/` are dropped, and so is the route's own query. A fragment whose route holds `=` is
    parameters, not a route (sign-in flows put `access_token=...` or `code=...` there): it
    is dropped like any fragment. The result is then minimised like any path.
    """
    base, sep, fragment = url.partition("#")
    if not sep:
        return url
    route = fragment.removeprefix("!").removeprefix("/").partition("?")[0].partition("#")[0]
    if not route or "=" in route:
        return base
    try:
        parts = urlsplit(base)
    except ValueError:
        return base
    path = parts.path.removesuffix("/") + "/" + route
    return urlunsplit((parts.scheme, parts.netloc, path, parts.query, ""))


def referrer_origin(raw: str | None) -> str | None:
    """scheme://host[:port] of a referrer; None when it has no host (or cannot be parsed)."""
    if not raw:
        return None
    try:
        parts = urlsplit(raw.strip())
        host, port = parts.hostname, parts.port
    except ValueError:
        return None
    if not parts.scheme or not host:
        return None
    return f"{parts.scheme.lower()}://{host}" + (f":{port}" if port else "")
