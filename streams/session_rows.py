"""The `session_batch` records the worker emits for the sessions that changed (streams/sessions.py).

A flush can carry tens of thousands of them (a new visit is a new row), so they go many per
Kafka record, and are built like the window totals: the fields that repeat (a session's site
and its entry pageview's referrer, UTM, device, browser and OS) are encoded once per distinct
value and kept, and a row is the join of those pieces and a few varints. `session_record` is
one row as a dict: the reference the byte path is tested against, and the path when the
schema has another shape (a registry, a new version).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from tally.schemas.avro_writer import encode_long, encoded, field_writers
from tally.streams.avro_bytes import zigzag_packed
from tally.streams.sessions import Attrs, Run, SessionKey

from tally.caches import bounded_put

ATTR_FIELDS = ["referrer_source", "referrer_host", "utm_source", "utm_medium", "utm_campaign", "device", "browser",
               "os", "country", "utm_content", "utm_term"]
LAYOUT = ["site", "visitor_id", "session_start", "session_end", "partition", "entry_page", "exit_page", "pageviews",
          "events", "duration_ms", "bounce", *ATTR_FIELDS, "version", "deleted"]


def signed(vid: int) -> int:
    """A visitor id as pageviews.visitor_id holds it (64 bits, signed)."""
    return vid - (1 << 64) if vid >= 1 << 63 else vid


def session_record(partition: int, version: int, key: SessionKey, s: Run | None) -> dict[str, Any]:
    """The `session` record of one session key: the session now, or its removal."""
    site, vid, _, start = key
    if s is None:
        return {"site": site, "visitor_id": signed(vid), "session_start": start, "session_end": start,
                "partition": partition, "entry_page": "", "exit_page": "", "pageviews": 0, "events": 0,
                "duration_ms": 0, "bounce": False, "version": version, "deleted": True}
    start, end, pageviews, events, _, _, entry_page, attrs, _, _, exit_page = s
    rec = {"site": site, "visitor_id": signed(vid), "session_start": start, "session_end": end,
           "partition": partition, "entry_page": entry_page, "exit_page": exit_page, "pageviews": pageviews,
           "events": events, "duration_ms": end - start, "bounce": pageviews == 1 and events == 1,
           "version": version, "deleted": False}
    rec.update(zip(ATTR_FIELDS, attrs[1:], strict=True))
    return rec


class SessionEncoder:
    """(Kafka key, `session_batch` bytes) of the changed sessions of a partition, byte-identical
    to codec.encode("session_batch", {"items": [session_record(...), ...]})
    (tests/test_sessions.py)."""

    CACHE_MAX = 65536
    RECORD_BYTES = 256 * 1024  # a record holds rows up to about this size (the broker's limit is 1 MB)

    def __init__(self, codec: Any) -> None:
        self.codec = codec
        self._strings: dict[str, bytes] = {}
        self._attrs: dict[Attrs, bytes] = {}
        self._no_attrs = b""
        batch = codec.latest("session_batch").parsed
        schema = next(f for f in batch["fields"] if f["name"] == "items")["type"]["items"]
        self.fast = ([f["name"] for f in batch["fields"]] == ["items"]
                     and [f["name"] for f in schema["fields"]] == LAYOUT and not getattr(codec, "registry_url", None))
        if self.fast:
            w = field_writers(schema)
            self._str = w["site"]
            self._attr_writers = [w[name] for name in ATTR_FIELDS]
            # Strings all (the entry attributes are joined from the cache of string pieces).
            plain = all(f["type"] == "string" for f in schema["fields"] if f["name"] in ("site", *ATTR_FIELDS))
            self._no_attrs = b"".join(encoded(wr, v) for wr, v in zip(
                self._attr_writers, ("direct", *[""] * (len(ATTR_FIELDS) - 1)), strict=True))
            # The record is header | row count | rows | 0 (one Avro array block).
            whole = codec.encode("session_batch", {"items": [session_record(0, 0, ("", 0, 0, 0), None)]})
            body = b"\x02" + self._bodies(0, 0, {("", 0, 0, 0): None})[0] + b"\x00"
            self.fast = plain and whole.endswith(body)
            self._header = whole[:-len(body)]

    def _s(self, value: str) -> bytes:
        piece = self._strings.get(value)
        return piece if piece is not None else bounded_put(self._strings, value, encoded(self._str, value),
                                                           self.CACHE_MAX)

    def _attr_piece(self, attrs: Attrs) -> bytes:
        """The entry attributes' fields (strings, as the layout has them), each from the cache
        of strings: a visit's combination is often new, its values seldom are."""
        if len(attrs) != len(ATTR_FIELDS) + 1:  # a short tuple would write a corrupt row (the slow path checks too)
            raise ValueError(f"session attributes have {len(attrs)} fields, the layout {len(ATTR_FIELDS) + 1}")
        strings = self._strings
        return bounded_put(self._attrs, attrs, b"".join([strings.get(v) or self._s(v) for v in attrs[1:]]),
                           self.CACHE_MAX)

    def _bodies(self, partition: int, version: int, changes: dict[SessionKey, Run | None]) -> list[bytes]:
        """The record bodies of many session keys: every varint of them (visitor id, start,
        end; pageviews, events, duration) in one vectorised pass, each group of three
        consecutive in the row and so one slice; the rest from cached pieces."""
        vids: list[int] = []
        nums: list[int] = []  # per row: start, end, pageviews, events, duration
        for (_, vid, _, start), s in changes.items():
            vids.append(vid)
            if s is None:
                nums += (start, start, 0, 0, 0)
            else:
                nums += (s[0], s[1], s[2], s[3], s[1] - s[0])
        cols = np.empty((len(vids), 6), dtype=np.int64)
        cols[:, 0] = np.array(vids, dtype=np.uint64).view(np.int64)  # as pageviews.visitor_id holds it (signed)
        cols[:, 1:] = np.array(nums, dtype=np.int64).reshape(-1, 5)
        data, at = zigzag_packed(cols.reshape(-1))
        st, strings, attr_pieces = self._s, self._strings, self._attrs
        tail, part = encode_long(version), encode_long(partition)
        removed = b"".join((part, b"\x00\x00\x00\x00\x00\x00", self._no_attrs, tail, b"\x01"))
        tail += b"\x00"
        out = []
        j = 0
        for (site, _, _, _), s in changes.items():
            if s is None:
                out.append(b"".join((strings.get(site) or st(site), data[at[j]:at[j + 3]], removed)))
            else:
                entry, attrs, exit_ = s[6], s[7], s[10]
                out.append(b"".join((strings.get(site) or st(site), data[at[j]:at[j + 3]], part,
                                     strings.get(entry) or st(entry), strings.get(exit_) or st(exit_),
                                     data[at[j + 3]:at[j + 6]], b"\x01" if s[2] == 1 and s[3] == 1 else b"\x00",
                                     attr_pieces.get(attrs) or self._attr_piece(attrs), tail)))
            j += 6
        return out

    def batches(self, partition: int, version: int,
                changes: dict[SessionKey, Run | None]) -> list[tuple[bytes, bytes]]:
        """(Kafka key, `session_batch` bytes) records holding every changed session key, in the
        dict's order. The key (partition, version, record number) is unique but for a
        re-emission of the same state, so the topic's compaction never drops a row."""
        if not self.fast:
            rows = [session_record(partition, version, k, s) for k, s in changes.items()]
            step = max(1, self.RECORD_BYTES // 256)
            chunks = [rows[i:i + step] for i in range(0, len(rows), step)]
            return [(f"{partition}|{version}|{i}".encode(), self.codec.encode("session_batch", {"items": chunk}))
                    for i, chunk in enumerate(chunks)]
        out: list[tuple[bytes, bytes]] = []
        chunk: list[bytes] = []
        size = 0
        for body in self._bodies(partition, version, changes):
            chunk.append(body)
            size += len(body)
            if size >= self.RECORD_BYTES:
                out.append(self._record(partition, version, len(out), chunk))
                chunk, size = [], 0
        if chunk:
            out.append(self._record(partition, version, len(out), chunk))
        return out

    def _record(self, partition: int, version: int, number: int, rows: list[bytes]) -> tuple[bytes, bytes]:
        return (f"{partition}|{version}|{number}".encode(),
                b"".join((self._header, encode_long(len(rows)), *rows, b"\x00")))
