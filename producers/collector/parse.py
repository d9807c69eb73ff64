"""Request bodies -> typed beacon requests. Pure functions: no HTTP, no Kafka.

Two wire shapes are accepted: Tally's own (`POST /api/v1/collect`,
`{site, path, referrer?, event?, props?}`) and Plausible's event API
(`POST /api/event`, `{n, u, d, r, p}`), so a site can switch trackers without
touching its pages. Both become one `BeaconRequest`; every later step works on
that record, never on the raw body.

Every rejection is a `BadBeacon` whose message names the offending field;
the collector turns it into `400 {"detail": ...}`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import orjson
from tally.schemas.engagement import (
    ENGAGED_MS,
    ENGAGEMENT,
    MAX_ENGAGED_MS,
    RESERVED_PREFIX,
    SCROLL_DEPTH,
)
from tally.schemas.sensitive import sensitive

from producers.collector.minimise import hash_route

MAX_FIELD = 2000  # path, referrer, user agent, prop values (characters)
MAX_EVENT = 64
# Event names are labels, not data: letters, digits, spaces and _ . : / -, e.g. Plausible's
# "Outbound Link: Click" or "signup".
EVENT_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:/-]*")
MAX_PROPS = 30
MAX_PROP_KEY = 300
PAGEVIEW = "pageview"


class BadBeacon(ValueError):
    """The body cannot become a beacon. The message names the field and what is wrong."""


@dataclass(slots=True)
class BeaconRequest:
    site: str
    path: str
    referrer: str | None = None
    event: str = PAGEVIEW
    props: dict[str, str] = field(default_factory=dict)


def clean_text(value: str, limit: int = MAX_FIELD) -> str:
    """`value` cut to `limit` characters and made encodable as UTF-8.

    JSON escapes (`"\\ud800"`) and undecodable header bytes (aiohttp keeps them
    as surrogates) yield strings that Avro cannot encode; one such string must
    not fail the whole micro-batch it travels in, so it is repaired here.
    """
    value = value[:limit]
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            value = value.encode("utf-8", "replace").decode("utf-8")
    return value


def json_body(raw: bytes) -> dict[str, Any]:
    """The body as a JSON object (bodies from sendBeacon arrive as text/plain)."""
    if not raw.strip():
        raise BadBeacon("body is empty; expected a JSON object")
    try:
        # orjson: ~5x cheaper than json on this hot path; it also refuses NaN, lone
        # surrogates and absurd nesting, all of which are bad input here anyway.
        body = orjson.loads(raw)
    except ValueError:
        raise BadBeacon("body is not valid JSON (UTF-8)") from None
    if not isinstance(body, dict):
        raise BadBeacon("body must be a JSON object")
    return body


def _required(body: dict[str, Any], name: str) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value.strip():
        raise BadBeacon(f"{name} is required (a non-empty string)")
    return value


def _optional(body: dict[str, Any], name: str) -> str | None:
    value = body.get(name)
    if value is None or value == "":
        return None
    if not isinstance(value, str):
        raise BadBeacon(f"{name} must be a string")
    return clean_text(value)


def _site(value: str, allowed: frozenset[str], name: str) -> str:
    site = value.strip().lower()
    if site not in allowed:
        raise BadBeacon(f"{name} {clean_text(site, 100)!r} is not on this collector's allowlist")
    return site


def _event(value: Any, name: str) -> str:
    if value is None:
        return PAGEVIEW
    if not isinstance(value, str) or not value.strip():
        raise BadBeacon(f"{name} must be a non-empty string")
    value = value.strip()
    problem = _event_problem(value)
    if problem:
        raise BadBeacon(f"{name} {problem}")
    return value


@lru_cache(maxsize=4096)
def _event_problem(value: str) -> str | None:
    """What is wrong with an event name (names repeat, so the verdict is cached)."""
    if len(value) > MAX_EVENT:
        return f"is longer than {MAX_EVENT} characters"
    if not EVENT_NAME.fullmatch(value):
        return "may hold only letters, digits, spaces and _ . : / -"
    found = sensitive(value)
    if found is not None:
        return f"looks like personal data or a secret ({found})"
    return None


def _props(value: Any, name: str) -> dict[str, str]:
    """Custom properties as strings; scalars are converted, nested values rejected."""
    if value is None:
        return {}
    if isinstance(value, str):  # Plausible sends `p` JSON-encoded as a string
        try:
            value = orjson.loads(value)
        except ValueError:
            raise BadBeacon(f"{name} must be a JSON object") from None
    if not isinstance(value, dict):
        raise BadBeacon(f"{name} must be a JSON object")
    if len(value) > MAX_PROPS:
        raise BadBeacon(f"{name} has {len(value)} entries; at most {MAX_PROPS} are allowed")
    props: dict[str, str] = {}
    for key, v in value.items():
        if v is None:
            continue
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, int | float):
            v = repr(v)
        elif not isinstance(v, str):
            raise BadBeacon(f"{name}.{clean_text(key, 50)} must be a string, number or boolean")
        if key.startswith(RESERVED_PREFIX):
            raise BadBeacon(f"{name}.{clean_text(key, 50)}: names starting with {RESERVED_PREFIX!r} are reserved")
        props[clean_text(key, MAX_PROP_KEY)] = clean_text(v)
    return props


def _integer(value: Any) -> int | None:
    """An integer or a string of one (Plausible accepts both), else None."""
    if isinstance(value, str) and value.strip().lstrip("-").isdigit() and len(value) < 20:
        value = int(value)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def engagement_props(body: dict[str, Any], props: dict[str, str]) -> dict[str, str]:
    """An engagement event's props with its scroll depth and engaged time, as Plausible reads
    them: `sd` above 100 is 100, `e` above MAX_ENGAGED_MS is MAX_ENGAGED_MS, a negative or
    non-integer value is missing, and an event missing both is refused."""
    sd, e = _integer(body.get("sd")), _integer(body.get("e"))
    sd = None if sd is None or sd < 0 else min(sd, 100)
    e = None if e is None or e < 0 else min(e, MAX_ENGAGED_MS)
    if sd is None and e is None:
        raise BadBeacon("an engagement event needs an integer sd (scroll depth, 0-100) or e (engaged time, ms >= 0)")
    out = dict(props)
    if sd is not None:
        out[SCROLL_DEPTH] = str(sd)
    if e is not None:
        out[ENGAGED_MS] = str(e)
    return out


def tally_beacon(body: dict[str, Any], allowed: frozenset[str]) -> BeaconRequest:
    """Tally's own shape: {site, path, referrer?, event?, props?}."""
    # Fast path for what tally.js sends (short ASCII strings, no props): about half
    # the cost of the general path below, which gives the same result.
    site, path, ref, event, props = (body.get("site"), body.get("path"), body.get("referrer"),
                                     body.get("event"), body.get("props"))
    if (type(site) is str and site in allowed and type(path) is str and 0 < len(path) <= MAX_FIELD
            and path.isascii() and not path.isspace() and (ref is None or (
                type(ref) is str and len(ref) <= MAX_FIELD and ref.isascii()))
            and (event is None or event == PAGEVIEW or (type(event) is str and event != ENGAGEMENT
                                                          and _event_problem(event) is None
                                                          and not event.endswith(" ")))
            and not props and (props is None or props == {})):
        return BeaconRequest(site, path, ref or None, event or PAGEVIEW, {})
    site = _site(_required(body, "site"), allowed, "site")
    path = clean_text(_required(body, "path"))
    event, props = _event(body.get("event"), "event"), _props(body.get("props"), "props")
    if event == ENGAGEMENT:
        props = engagement_props(body, props)
    return BeaconRequest(site, path, _optional(body, "referrer"), event, props)


def _hash_mode(value: Any) -> bool:
    """Plausible's `h`: 1 for a hash-routed site (its tracker's hash mode sends `h: 1`)."""
    if value is None or value in (0, 1, "0", "1"):  # True and False equal 1 and 0
        return value in (1, "1")
    raise BadBeacon("h must be 1 (hash-based routing) or 0")


def plausible_beacon(body: dict[str, Any], allowed: frozenset[str]) -> BeaconRequest:
    """Plausible's event API: n=name, u=url, d=domain(s), r=referrer, p (or m)=props, h=1 for
    hash-based routing, and for `engagement` events sd and e.

    With `h: 1` the route in `u`'s fragment becomes part of the path, as tally.js's
    data-hash does (minimise.hash_route); without it the fragment is dropped.

    `d` may list several comma-separated domains; the beacon goes to the first
    one on the allowlist (Tally records one site per event).
    """
    name = _event(_required(body, "n"), "n")
    url = clean_text(_required(body, "u"))
    if _hash_mode(body.get("h")):
        url = hash_route(url)
    domains = [d.strip().lower() for d in _required(body, "d").split(",") if d.strip()]
    site = next((d for d in domains if d in allowed), None)
    if site is None:
        raise BadBeacon(f"d {clean_text(','.join(domains), 100)!r} is not on this collector's allowlist")
    props = _props(body["p"] if "p" in body else body.get("m"), "p")
    if name == ENGAGEMENT:
        props = engagement_props(body, props)
    return BeaconRequest(site, url, _optional(body, "r"), name, props)
