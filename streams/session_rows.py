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
from tally.streams.avro_bytes import zigzag_varints
from tally.streams.sessions import Attrs, Session, SessionKey

from tally.caches import bounded_put

ATTR_FIELDS = ["referrer_source", "referrer_host", "utm_source", "utm_medium", "utm_campaign", "device", "browser",
               "os", "country", "utm_content", "utm_term"]
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
                self._attr_writers, ("direct", *[""] * (len(ATTR_FIELDS) - 1)), strict=True))
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
        return self._bodies(partition, version, [(key, s)])[0]

    def _bodies(self, partition: int, version: int, changes: list[tuple[SessionKey, Session | None]]) -> list[bytes]:
        """The record bodies of many session keys: the big varints (visitor id, start, end,
        duration) of all of them in one vectorised pass, the rest from cached pieces."""
        ints: list[int] = []
        for (_, vid, _, start), s in changes:
            if s is None:
                ints += (signed(vid), start, start, 0)
            else:
                ints += (signed(vid), s.start, s.end, s.end - s.start)
        big = zigzag_varints(ints)
        lng, st = encode_long, self._s
        tail, part = lng(version), lng(partition)
        removed = b"".join((part, b"\x00\x00\x00\x00\x00\x00", self._no_attrs, tail, b"\x01"))
        tail += b"\x00"
        out = []
        for i, ((site, _, _, _), s) in enumerate(changes):
            j = 4 * i
            if s is None:
                out.append(b"".join((st(site), big[j], big[j + 1], big[j + 2], removed)))
                continue
            out.append(b"".join((st(site), big[j], big[j + 1], big[j + 2], part, st(s.entry[2]), st(s.exit[2]),
                                 lng(s.pageviews), lng(s.events), big[j + 3],
                                 b"\x01" if s.pageviews == 1 and s.events == 1 else b"\x00",
                                 self._attr_piece(s.entry[3]), tail)))
        return out

    def __call__(self, partition: int, version: int, key: SessionKey, s: Session | None) -> tuple[bytes, bytes]:
        return self.many(partition, version, {key: s})[0]

    def many(self, partition: int, version: int,
             changes: dict[SessionKey, Session | None]) -> list[tuple[bytes, bytes]]:
        """(Kafka key, `session` bytes) of each changed session key, in the dict's order."""
        keys = [f"{k[0]}|{k[1]}|{k[3]}".encode() for k in changes]
        if not self.fast:
            return [(kk, self.codec.encode("session", session_record(partition, version, k, s)))
                    for kk, (k, s) in zip(keys, changes.items(), strict=True)]
        header = self._header
        return [(kk, header + body)
                for kk, body in zip(keys, self._bodies(partition, version, list(changes.items())), strict=True)]
