"""Enrichment of one beacon into a pageview. Pure functions: no Kafka, no I/O."""

from __future__ import annotations

import hashlib
from typing import Any
from urllib.parse import urlsplit


def visitor_id(salt: bytes, site: str, ip_pseudonym: str, user_agent: str) -> int:
    """64-bit keyed BLAKE2b of (site, IP pseudonym, UA) under the period salt, as a signed long."""
    msg = b"\x00".join((site.encode(), ip_pseudonym.encode(), user_agent.encode()))
    digest = hashlib.blake2b(msg, key=salt, digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def normalize_path(path: str) -> tuple[str, str]:
    """(hostname, path) of a path or URL, without query string or fragment."""
    parts = urlsplit(path)
    clean = parts.path or "/"
    return parts.hostname or "", clean


def enrich(beacon: dict[str, Any], salt: bytes) -> dict[str, Any]:
    host, path = normalize_path(beacon["path"])
    referrer = beacon.get("referrer") or ""
    ref_host = urlsplit(referrer).hostname or "" if referrer else ""
    return {
        "event_id": beacon["event_id"],
        "received_at": beacon["received_at"],
        "site": beacon["site"],
        "hostname": host or beacon["site"],
        "path": path,
        "event": beacon.get("event", "pageview"),
        "visitor_id": visitor_id(salt, beacon["site"], beacon["ip_pseudonym"], beacon["user_agent"]),
        "referrer_host": ref_host,
        "referrer_source": "other" if ref_host else "direct",
        "utm_source": None,
        "utm_medium": None,
        "utm_campaign": None,
        "browser": "",
        "os": "",
        "device": "",
        "user_agent": None,
        "props": beacon.get("props") or {},
    }
