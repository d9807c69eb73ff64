"""The `session` records the worker emits for the sessions that changed (streams/sessions.py).

A flush can carry tens of thousands of them (a new visit is a new row), so they are built
like the window totals: the fields that repeat (a session's site and its entry pageview's
referrer, UTM, device, browser and OS) are encoded once per distinct value and kept, and a
record is the join of those pieces and a few varints. `session_record` is the same record as
a dict: the reference the byte path is tested against, and the path when the schema has
another shape (a registry, a new version).
"""

from __future__ import annotations

from typing import Any

from tally.schemas.avro_writer import encode_long, encoded, field_writers
from tally.streams.sessions import Attrs, Session, SessionKey

from tally.caches import bounded_put

ATTR_FIELDS = ["referrer_source", "referrer_host", "utm_source", "utm_medium", "utm_campaign", "device", "browser",
               "os", "country"]
LAYOUT = ["site", "visitor_id", "session_start", "session_end", "partition", "entry_page", "exit_page", "pageviews",
          "events", "duration_ms", "bounce", *ATTR_FIELDS, "version", "deleted"]


def signed(vid: int) -> int:
    """A visitor id as pageviews.visitor_id holds it (64 bits, signed)."""
    return vid - (1 << 64) if vid >= 1 << 63 else vid


def session_record(partition: int, version: int, key: SessionKey, s: Session | None) -> dict[str, Any]:
    """The `session` record of one session key: the session now, or its removal."""
    site, vid, _, start = key
    if s is None:
        return {"site": site, "visitor_id": signed(vid), "session_start": start, "session_end": start,
                "partition": partition, "entry_page": "", "exit_page": "", "pageviews": 0, "events": 0,
                "duration_ms": 0, "bounce": False, "version": version, "deleted": True}
    rec = {"site": site, "visitor_id": signed(vid), "session_start": s.start, "session_end": s.end,
           "partition": partition, "entry_page": s.entry[2], "exit_page": s.exit[2], "pageviews": s.pageviews,
           "events": s.events, "duration_ms": s.duration_ms, "bounce": s.bounce, "version": version,
           "deleted": False}
    rec.update(zip(ATTR_FIELDS, s.attrs[1:], strict=True))
    return rec


class SessionEncoder:
    """(Kafka key, `session` bytes) of a session key's current state, byte-identical to
    codec.encode("session", session_record(...)) (tests/test_sessions.py)."""

    CACHE_MAX = 65536

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self._strings: dict[str, bytes] = {}
        self._attrs: dict[Attrs, bytes] = {}
        self._no_attrs = b""
        schema = codec.latest("session").parsed
        self.fast = [f["name"] for f in schema["fields"]] == LAYOUT and not getattr(codec, "registry_url", None)
        if self.fast:
            w = field_writers(schema)
            self._str = w["site"]
            self._attr_writers = [w[name] for name in ATTR_FIELDS]
            self._no_attrs = b"".join(encoded(wr, v) for wr, v in zip(
                self._attr_writers, ("direct", "", "", "", "", "", "", "", ""), strict=True))
            whole = codec.encode("session", session_record(0, 0, ("", 0, 0, 0), None))
            body = self._body(0, 0, ("", 0, 0, 0), None)
            self.fast = whole.endswith(body)
            self._header = whole[:-len(body)]

    def _s(self, value: str) -> bytes:
        piece = self._strings.get(value)
        return piece if piece is not None else bounded_put(self._strings, value, encoded(self._str, value),
                                                           self.CACHE_MAX)

    def _attr_piece(self, attrs: Attrs) -> bytes:
        piece = self._attrs.get(attrs)
        if piece is None:
            piece = bounded_put(self._attrs, attrs, b"".join(
                encoded(wr, v) for wr, v in zip(self._attr_writers, attrs[1:], strict=True)), self.CACHE_MAX)
        return piece

    def _body(self, partition: int, version: int, key: SessionKey, s: Session | None) -> bytes:
        site, vid, _, start = key
        lng, st = encode_long, self._s
        head = st(site) + lng(signed(vid))
        if s is None:
            return b"".join((head, lng(start), lng(start), lng(partition), b"\x00\x00\x00\x00\x00\x00",
                             self._no_attrs, lng(version), b"\x01"))
        return b"".join((head, lng(s.start), lng(s.end), lng(partition), st(s.entry[2]), st(s.exit[2]),
                         lng(s.pageviews), lng(s.events), lng(s.end - s.start), b"\x01" if s.bounce else b"\x00",
                         self._attr_piece(s.attrs), lng(version), b"\x00"))

    def __call__(self, partition: int, version: int, key: SessionKey, s: Session | None) -> tuple[bytes, bytes]:
        kafka_key = f"{key[0]}|{key[1]}|{key[3]}".encode()
        if not self.fast:
            return kafka_key, self.codec.encode("session", session_record(partition, version, key, s))
        return kafka_key, self._header + self._body(partition, version, key, s)
