"""Hand-coded Avro for the worker's two hot records: reading beacon_batch, writing pageview_batch.

Why: fastavro's generic reader costs ~10 us per beacon here (it walks the schema for every
field and builds a dict per item), and writing a pageview dict field by field costs as much
again, while the stage's own work is a few us. Both records are almost all strings that
repeat (site, path, user agent, referrer), and an Avro record is just its fields' encodings
in schema order. So:

- `BeaconReader` slices one beacon_batch body into per-item tuples of *raw bytes* (no str
  is built; the worker decodes a string only the first time it sees it, as a cache key);
- `PageviewWriter` joins cached encoded pieces (site, hostname + path, referrer, browser/OS/
  device, ...) into pageview items, with the bytes of event_id, received_at, event and props
  copied unchanged from the beacon.

Both are used only for the layouts declared in schemas/layouts.py, checked against the
repo's schemas when the worker starts; any other writer version is decoded by fastavro and re-encoded in the known
shape first. Anything malformed raises DecodeError, like the codec. tests/test_stream_wire.py
checks both against fastavro and the dict path (streams/enrich.py) byte for byte / field by
field.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import fastavro
import numpy as np
from tally.schemas.avro_writer import Fallback, encoded, field_writers
from tally.schemas.codec import CONFLUENT_MAGIC, MAGIC, Codec, DecodeError
from tally.schemas.codec import long_at as _long_at
from tally.schemas.layouts import BEACON, PAGEVIEW

# One decoded beacon, as raw bytes. *_enc fields include their Avro length prefix and are
# copied into the pageview unchanged; the others are the string's UTF-8 bytes.
# (start, end, event_id_enc, received_at, received_at_enc, site_enc, path, referrer | None,
#  event_enc, props_enc, user_agent, ip_pseudonym, datacenter, country_enc)
RawBeacon = tuple[int, int, bytes, int, bytes, bytes, bytes, "bytes | None", bytes, bytes, bytes, bytes, int, bytes]


def _str_at(data: bytes, pos: int) -> tuple[int, int]:
    """(start, end) of the UTF-8 bytes of an Avro string at pos."""
    b = data[pos]
    if b < 0x80:
        n = (b >> 1) ^ -(b & 1)
        pos += 1
    else:
        n, pos = _long_at(data, pos)
    if n < 0:
        raise DecodeError("negative string length")
    return pos, pos + n


def _map_end(data: bytes, pos: int) -> int:
    """Position after a map<string> at pos; every key and value must be valid UTF-8."""
    while True:
        count, pos = _long_at(data, pos)
        if count == 0:
            return pos
        if count < 0:
            count = -count
            _, pos = _long_at(data, pos)  # block size in bytes
        for _ in range(2 * count):
            s, pos = _str_at(data, pos)
            data[s:pos].decode()


def read_beacon_items(data: bytes) -> list[RawBeacon]:
    """The items of one beacon_batch body in the BEACON layout (no header), as RawBeacon tuples.

    Strings shorter than 64 bytes (one-byte length) are sliced inline: a function call per
    field would cost as much as the rest of the loop."""
    # unrolled: one block per field of the BEACON layout, in order, on purpose (see above)
    items: list[RawBeacon] = []
    append = items.append
    str_at = _str_at
    long_at = _long_at
    pos = 0
    end = len(data)
    try:
        while True:
            count, pos = long_at(data, pos)
            if count == 0:
                break
            if count < 0:
                count = -count
                _, pos = long_at(data, pos)
            for _ in range(count):
                start = pos
                b = data[pos]  # event_id
                if b & 0x81:
                    s, pos = str_at(data, pos)
                else:
                    s = pos + 1
                    pos = s + (b >> 1)
                eid = data[start:pos]
                if not eid.isascii():
                    data[s:pos].decode()
                t0 = pos
                ts, pos = long_at(data, pos)
                ts_enc = data[t0:pos]
                s0 = pos
                b = data[pos]  # site
                if b & 0x81:
                    _, pos = str_at(data, pos)
                else:
                    pos += 1 + (b >> 1)
                site_enc = data[s0:pos]
                b = data[pos]  # path
                if b & 0x81:
                    s, pos = str_at(data, pos)
                else:
                    s = pos + 1
                    pos = s + (b >> 1)
                path = data[s:pos]
                branch = data[pos]  # referrer: union of null and string
                pos += 1
                if branch == 2:
                    b = data[pos]
                    if b & 0x81:
                        s, pos = str_at(data, pos)
                    else:
                        s = pos + 1
                        pos = s + (b >> 1)
                    ref: bytes | None = data[s:pos]
                elif branch == 0:
                    ref = None
                else:
                    raise DecodeError(f"referrer: bad union branch {branch}")
                e0 = pos
                b = data[pos]  # event
                if b & 0x81:
                    _, pos = str_at(data, pos)
                else:
                    pos += 1 + (b >> 1)
                event_enc = data[e0:pos]
                if data[pos] == 0:  # props, nearly always empty
                    props = b"\x00"
                    pos += 1
                else:
                    p0 = pos
                    pos = _map_end(data, pos)
                    props = data[p0:pos]
                b = data[pos]  # user_agent
                if b & 0x81:
                    s, pos = str_at(data, pos)
                else:
                    s = pos + 1
                    pos = s + (b >> 1)
                ua = data[s:pos]
                b = data[pos]  # ip_pseudonym
                if b & 0x81:
                    s, pos = str_at(data, pos)
                else:
                    s = pos + 1
                    pos = s + (b >> 1)
                ip = data[s:pos]
                if not ip.isascii():
                    ip.decode()
                dc = data[pos]
                pos += 1
                if dc > 1:
                    raise DecodeError(f"datacenter: bad boolean {dc}")
                c0 = pos
                b = data[pos]  # country
                if b & 0x81:
                    s, pos = str_at(data, pos)
                else:
                    s = pos + 1
                    pos = s + (b >> 1)
                if not data[s:pos].isascii():
                    data[s:pos].decode()
                append((start, pos, eid, ts, ts_enc, site_enc, path, ref, event_enc, props, ua, ip, dc, data[c0:pos]))
            if pos > end:
                raise DecodeError("truncated beacon_batch")
    except IndexError:
        raise DecodeError("truncated beacon_batch") from None
    except UnicodeDecodeError as exc:
        raise DecodeError(f"beacon_batch: invalid UTF-8: {exc}") from None
    if pos > end:
        raise DecodeError("truncated beacon_batch")
    return items


class BeaconReader:
    """beacon_batch record bytes -> (body in the BEACON layout, its items). Records of a writer
    schema in that shape are sliced as they are; any other encoding is decoded by the codec
    and re-encoded in the shape (rare: the collector writes the newest schema)."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec
        shaped = [v for v in codec.versions["beacon_batch"] if BEACON.matches(v.raw, plain=True)]
        if not shaped:
            raise Fallback  # no schema in the shape this reader knows: the worker uses the dict path
        self._shape_fps = {v.fingerprint for v in shaped}
        self._writer = shaped[-1].writer
        self.header = MAGIC + shaped[-1].fingerprint

    def __call__(self, record: bytes) -> tuple[bytes, list[RawBeacon]]:
        if record[:2] == MAGIC and bytes(record[2:10]) in self._shape_fps:
            body = bytes(record[10:])
        else:
            decoded = self.codec.decode("beacon_batch", record)  # DecodeError on garbage
            buf = io.BytesIO()
            try:
                fastavro.schemaless_writer(buf, self._writer, decoded)
            except Exception as exc:
                raise DecodeError(f"beacon_batch not representable in the current shape: {exc}") from None
            body = buf.getvalue()
        return body, read_beacon_items(body)

    def one_item_record(self, body: bytes, item: RawBeacon) -> bytes:
        """A one-beacon beacon_batch record holding exactly this item's original bytes."""
        return self.header + b"\x02" + body[item[0]:item[1]] + b"\x00"


_SHIFTS = np.arange(0, 70, 7, dtype=np.uint64)  # the ten 7-bit groups of a 64-bit varint
_LIMITS = np.array([1 << (7 * k) for k in range(1, 10)], dtype=np.uint64)
_COLUMNS = np.arange(10)


def _zigzag_groups(values: list[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The ten 7-bit groups (continuation bits set) of each value's Avro long, and its length."""
    v = values if isinstance(values, np.ndarray) else np.array(values, dtype=np.int64)
    z = (v.astype(np.uint64) << np.uint64(1)) ^ (v >> np.int64(63)).astype(np.uint64)
    lengths = 1 + (z[:, None] >= _LIMITS).sum(axis=1)
    groups = (z[:, None] >> _SHIFTS) & np.uint64(0x7F)
    groups |= ((lengths[:, None] - 1) > _COLUMNS).astype(np.uint64) << np.uint64(7)  # continuation bits
    return groups.astype(np.uint8), lengths


def zigzag_varints(values: list[int]) -> list[bytes]:
    """Avro long encodings of many signed 64-bit ints (vectorised; visitor ids are ~10 bytes)."""
    if not values:
        return []
    groups, lengths = _zigzag_groups(values)
    flat = groups.tobytes()
    return [flat[i:i + n] for i, n in zip(range(0, 10 * len(values), 10), lengths.tolist(), strict=True)]


PLANES_FROM = 2048  # values from which zigzag_packed builds one byte plane at a time


def zigzag_packed(values: np.ndarray) -> tuple[bytes, list[int]]:
    """The Avro long encodings of many signed 64-bit ints, one after the other, and where
    each starts (one more offset than values: the end). Consecutive values are one slice."""
    if not len(values):
        return b"", [0]
    if len(values) >= PLANES_FROM:
        return _packed_planes(values)
    groups, lengths = _zigzag_groups(values)
    at = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(lengths, out=at[1:])
    return groups[lengths[:, None] > _COLUMNS].tobytes(), at.tolist()


def _packed_planes(values: np.ndarray) -> tuple[bytes, list[int]]:
    """zigzag_packed of a flush's worth of values (tens of thousands): byte k of every value
    as one contiguous uint8 plane, only as many planes as the longest value needs. The
    (n, 10) uint64 temporaries of _zigzag_groups outgrow the CPU caches there and cost twice
    as much (bench/stream_offline.py's session rows); for a few hundred values the fewer
    numpy calls of _zigzag_groups win."""
    z = (values.astype(np.uint64) << np.uint64(1)) ^ (values >> np.int64(63)).astype(np.uint64)
    lengths = np.searchsorted(_LIMITS, z, side="right") + 1
    m = int(lengths.max())
    planes = np.empty((m, len(z)), dtype=np.uint8)
    for k in range(m):
        planes[k] = z & np.uint64(0x7F)
        if k + 1 < m:
            planes[k] |= (lengths > k + 1).view(np.uint8) << np.uint8(7)  # continuation bit
            z >>= np.uint64(7)
    at = np.zeros(len(z) + 1, dtype=np.int64)
    np.cumsum(lengths, out=at[1:])
    return planes.T[(lengths > _COLUMNS[:m, None]).T].tobytes(), at.tolist()


class PageviewWriter:
    """Encoded pieces of pageview items, and whole pageview_batch records."""

    def __init__(self, codec: Codec) -> None:
        latest = codec.latest("pageview_batch")
        if not PAGEVIEW.matches(latest.raw, plain=True):
            raise Fallback
        items = next(f for f in latest.parsed["fields"] if f["name"] == "items")["type"]["items"]
        self.fields = field_writers(items)
        self.codec = codec
        # Single-object prefix now; a Confluent prefix (schema id) on first use, so a schema
        # registry that is down at start delays the first batch instead of the start.
        self._header = None if codec.registry_url else self._prefix()
        self._long = self.fields["visitor_id"]

    def _prefix(self) -> bytes:
        empty = self.codec.encode("pageview_batch", {"source_partition": 0, "source_offset": 0, "items": []})
        if empty[-3:] != b"\x00\x00\x00" or empty[0] not in (MAGIC[0], CONFLUENT_MAGIC):
            raise Fallback(f"unexpected pageview_batch prefix {empty[:12]!r}")
        return empty[:-3]

    @property
    def header(self) -> bytes:
        if self._header is None:
            self._header = self._prefix()
        return self._header

    def enc(self, field: str, value: Any) -> bytes:
        return encoded(self.fields[field], value)

    def batch(self, source_partition: int, source_offset: int, items: list[bytes]) -> bytes:
        if not items:
            raise ValueError("an empty pageview batch is never sent")
        return b"".join((self.header, encoded(self._long, source_partition), encoded(self._long, source_offset),
                         encoded(self._long, len(items)), *items, b"\x00"))


def writer_or_none(factory: Callable[[Codec], Any], codec: Codec) -> Any:
    try:
        return factory(codec)
    except Fallback:
        return None
