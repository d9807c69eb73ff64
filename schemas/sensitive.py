"""Detectors of personal data and secrets in short strings: one home for the rules that the
catalog (ids, routes, enum values) and the collector (path segments, query values, props)
both apply.

`kind(value)` names what a whole value looks like ("email", "secret", "jwt", "card",
"iban", "ip", "phone", "uuid", "hex", "token") or returns None. Each detector is a plain
function so tests can exercise it alone. They are heuristics with known limits, listed in
docs/privacy.md: a secret format without a known prefix and with low entropy passes, and a
16-digit id with a card network's prefix that passes Luhn is taken for a card.
"""

from __future__ import annotations

import ipaddress
import math
import re
from collections import Counter
from collections.abc import Callable

EMAIL = re.compile(r"[^\s@/?#]+@[^\s@/?#]+\.[A-Za-z]{2,}")
# Prefixes of well-known credential formats (Stripe, GitHub, Slack, AWS, Google, GitLab,
# npm, PyPI, OpenAI/Anthropic-style keys, SendGrid, Twilio), then enough key material.
SECRET_PREFIX = re.compile(
    r"(?:sk|pk|rk)_(?:live|test)_[A-Za-z0-9]{8,}"
    r"|gh[pousr]_[A-Za-z0-9]{20,}|github_pat_[A-Za-z0-9_]{20,}"
    r"|xox[abposr]-[A-Za-z0-9-]{8,}"
    r"|(?:AKIA|ASIA|AGPA|AIDA|AROA)[0-9A-Z]{16}"
    r"|AIza[0-9A-Za-z_-]{30,}|glpat-[0-9A-Za-z_-]{20,}|npm_[A-Za-z0-9]{30,}|pypi-[A-Za-z0-9_-]{30,}"
    r"|sk-(?:proj-|ant-)?[A-Za-z0-9_-]{20,}|SG\.[A-Za-z0-9_-]{16,}\.[A-Za-z0-9_-]{16,}|SK[0-9a-f]{32}"
)
JWT = re.compile(r"eyJ[A-Za-z0-9_-]{5,}\.eyJ[A-Za-z0-9_-]{5,}\.[A-Za-z0-9_-]*")
UUID = re.compile(r"[0-9a-fA-F]{8}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{4}-?[0-9a-fA-F]{12}")
HEX = re.compile(r"(?:0x)?[0-9a-fA-F]{16,}")
B64 = re.compile(r"[A-Za-z0-9+/_=-]{20,}")
_DIGITS = re.compile(r"\+?[\d][\d .()-]{7,}\d")
_IBAN = re.compile(r"[A-Z]{2}\d{2}[A-Z0-9]{11,30}")
# Card networks' first digits (Visa, Mastercard, Amex, Discover, Diners, JCB, UnionPay).
_CARD_IIN = re.compile(r"4|5[1-5]|2[2-7]|3[47]|6(?:011|5|4[4-9]|2)|3(?:0[0-5]|[68])|35")
_IBAN_LENGTHS = {"DE": 22, "FR": 27, "GB": 22, "NL": 18, "ES": 24, "IT": 27, "BE": 16, "CH": 21,
                 "AT": 20, "PL": 28, "SE": 24, "DK": 18, "NO": 15, "FI": 18, "IE": 22, "PT": 25,
                 "LU": 20, "CZ": 24, "SK": 24, "HU": 28, "RO": 24, "GR": 27, "BG": 22, "HR": 21,
                 "SI": 19, "EE": 20, "LT": 20, "LV": 21}
# A mixed-case token this long with this many Shannon bits per character is taken for key
# material. 32 characters: shorter random ids (Stripe's pi_3Mtw..., 27) stay ids.
ENTROPY_MIN_LENGTH = 32
ENTROPY_MIN_BITS = 4.2


def luhn_ok(digits: str) -> bool:
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return total % 10 == 0


def is_card(value: str) -> bool:
    """13 to 19 digits (spaces or dashes allowed) of a card network's range that pass Luhn."""
    digits = re.sub(r"[ -]", "", value)
    return (13 <= len(digits) <= 19 and digits.isdigit() and _CARD_IIN.match(digits) is not None
            and luhn_ok(digits))


def is_iban(value: str) -> bool:
    """An IBAN (spaces allowed) whose ISO 13616 mod-97 check holds."""
    s = value.replace(" ", "").upper()
    if not _IBAN.fullmatch(s):
        return False
    length = _IBAN_LENGTHS.get(s[:2])
    if length is not None and len(s) != length:
        return False
    moved = s[4:] + s[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def is_ip(value: str) -> bool:
    """An IPv4 or IPv6 literal (IPv6 may carry brackets or a zone)."""
    v = value.strip("[]")
    if not v or not (v[0].isdigit() or ":" in v or v[0] in "abcdefABCDEF"):
        return False
    try:
        ipaddress.ip_address(v.split("%", 1)[0])
    except ValueError:
        return False
    return True


def is_phone(value: str) -> bool:
    """An international number (+ and 8-15 digits) or 9-15 digits written in groups."""
    if not _DIGITS.fullmatch(value):
        return False
    digits = re.sub(r"\D", "", value)
    grouped = any(c in value for c in " .()-")
    return 8 <= len(digits) <= 15 and (value.startswith("+") or (grouped and len(digits) >= 9))


def entropy_bits(value: str) -> float:
    n = len(value)
    return -sum(c / n * math.log2(c / n) for c in Counter(value).values()) if n else 0.0


def is_high_entropy(value: str) -> bool:
    """A long token mixing lower case, upper case and digits with high per-character entropy:
    random key material. UUIDs, hex digests, ULIDs and snake_case names do not mix all three."""
    return (len(value) >= ENTROPY_MIN_LENGTH and B64.fullmatch(value) is not None and any(c.islower() for c in value)
            and any(c.isupper() for c in value) and any(c.isdigit() for c in value)
            and entropy_bits(value) >= ENTROPY_MIN_BITS)


def is_token(value: str) -> bool:
    """A long base64 or base32 token: 20+ characters mixing cases and digits, or 24+
    characters without separators of which a fifth are digits. Slugs (`annual-report-2024`)
    have neither."""
    if len(value) < 20 or B64.fullmatch(value) is None or not any(c.isdigit() for c in value):
        return False
    if any(c.islower() for c in value) and any(c.isupper() for c in value):
        return True
    return len(value) >= 24 and not any(c in "-_" for c in value) and sum(c.isdigit() for c in value) * 5 >= len(value)


def is_secret(value: str) -> bool:
    return SECRET_PREFIX.search(value) is not None or is_high_entropy(value)


# What each kind is called, and its test, in the order they are tried. `identifiers` are
# the kinds an opaque id may legitimately have; the rest are personal data or secrets.
DETECTORS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("email", lambda v: EMAIL.search(v) is not None),
    ("jwt", lambda v: JWT.search(v) is not None),
    ("secret", is_secret),
    ("card", is_card),
    ("iban", is_iban),
    ("ip", is_ip),
    ("phone", is_phone),
)
IDENTIFIERS: tuple[tuple[str, Callable[[str], bool]], ...] = (
    ("uuid", lambda v: UUID.fullmatch(v) is not None),
    ("hex", lambda v: HEX.fullmatch(v) is not None),
    ("token", lambda v: is_token(v)),
)


def sensitive(value: str) -> str | None:
    """The kind of personal data or secret `value` is or contains, else None."""
    for name, test in DETECTORS:
        if test(value):
            return name
    return None


def kind(value: str) -> str | None:
    """sensitive(value), or else the identifier kind (uuid, hex, token) of the whole value."""
    found = sensitive(value)
    if found is not None:
        return found
    for name, test in IDENTIFIERS:
        if test(value):
            return name
    return None
