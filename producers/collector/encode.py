"""beacon_batch bytes from cached, already-encoded pieces (the collector's hot path).

Why: building a record dict per beacon and running the codec's compiled
writer over a micro-batch cost ~7 µs a beacon here, as much as parsing the
request. But a beacon is almost all repeats: the site, the path, the event name,
empty props, the user agent, the minute's timestamp. (Not the IP pseudonym: nearly
every beacon of real traffic has a new one, so caching it would only evict the
pieces that do repeat; it is 32 hex characters, written behind their length.)
An Avro record is its fields' encodings in schema order and an array block
is a count, the items and a 0, so each beacon becomes one join of cached
bytes, and a micro-batch one more join.

The pieces are made by the codec's own compiled writers
(tally.schemas.avro_writer), in the order of the beacon layout declared in
schemas/layouts.py, checked against the newest beacon_batch schema at start: a schema change without a matching change here,
or a schema registry (Confluent framing), selects `DictEncoder`, which builds
dicts and calls the codec as before. tests/test_collector_units.py compares
both encoders' bytes and fastavro's decoding.
"""

from __future__ import annotations

from typing import Any

from tally.schemas.avro_writer import Fallback, compile_writer, encoded, field_writers
from tally.schemas.codec import MAGIC, Codec
from tally.schemas.layouts import BEACON

from tally.caches import bounded_put
from tally.ids import uuid7_prefix, uuid7_tail

SCHEMA = "beacon_batch"
_UUID_LEN = b"\x48"  # Avro length prefix of a 36-character string
_CACHE_MAX = 4096  # entries per piece cache (tally.caches: cleared when full)
_NO_PROPS = b"\x00"
_DATACENTER = (b"\x00", b"\x01")


class Unavailable(Exception):
    """The fast encoder cannot write this codec's beacon_batch (other layout, registry)."""


class DictEncoder:
    """Beacons as dicts, encoded by the codec: any schema version, any wire format."""

    def __init__(self, codec: Codec) -> None:
        self.codec = codec

    def item(self, now_ms: int, site: str, path: str, referrer: str | None, event: str,
             props: dict[str, str], user_agent: str, pseudonym: str, datacenter: bool, country: str = "") -> Any:
        return {"event_id": uuid7_prefix(now_ms) + uuid7_tail().decode(), "received_at": now_ms,
                "site": site, "path": path, "referrer": referrer, "event": event, "props": props,
                "user_agent": user_agent, "ip_pseudonym": pseudonym, "datacenter": datacenter, "country": country}

    def batch(self, items: list[Any]) -> bytes:
        return self.codec.encode(SCHEMA, {"items": items})


class PieceEncoder:
    """Beacon items as bytes joined from cached pieces; see the module docstring."""

    def __init__(self, codec: Codec) -> None:
        if codec.registry_url:
            raise Unavailable("Confluent wire format: the registry serializer writes the header")
        schema = codec.latest(SCHEMA)
        if not BEACON.matches(schema.raw):
            raise Unavailable(f"{schema.path.name} has another beacon layout than schemas/layouts.py's")
        [items] = [f for f in schema.parsed["fields"] if f["name"] == "items"]
        record = items["type"]["items"]
        try:
            w = field_writers(record)
        except Fallback:
            raise Unavailable("a beacon field needs fastavro") from None
        self._string = w["site"]
        self._referrer = w["referrer"]
        self._timestamp = w["received_at"]
        self._props = w["props"]
        self._count = compile_writer("long")
        self.header = MAGIC + schema.fingerprint
        self._ms = -1
        self._ms_bytes = b""  # uuid prefix of the current ms (with its length byte) ...
        self._ts_bytes = b""  # ... and that ms as received_at
        self._strings: dict[str, bytes] = {}  # site, event, user agent
        self._len32 = encoded(self._string, "0" * 32)[:-32]  # Avro length of a 32-byte string
        self._referrers: dict[str, bytes] = {}  # union-encoded: other bytes than the same string
        self._paths: dict[str, bytes] = {}  # minimised paths: a site's pages recur
        self._null = encoded(self._referrer, None)

    def _cached(self, s: str) -> bytes:
        b = self._strings.get(s)
        if b is None:
            b = bounded_put(self._strings, s, encoded(self._string, s), _CACHE_MAX)
        return b

    def item(self, now_ms: int, site: str, path: str, referrer: str | None, event: str,
             props: dict[str, str], user_agent: str, pseudonym: str, datacenter: bool, country: str = "") -> bytes:
        if now_ms != self._ms:
            self._ms = now_ms
            self._ms_bytes = _UUID_LEN + uuid7_prefix(now_ms).encode()
            self._ts_bytes = encoded(self._timestamp, now_ms)
        strings = self._strings
        pseudo = pseudonym.encode()
        ref = self._null if referrer is None else self._referrers.get(referrer)
        if ref is None:
            ref = bounded_put(self._referrers, referrer, encoded(self._referrer, referrer), _CACHE_MAX)
        path_bytes = self._paths.get(path)
        if path_bytes is None:
            path_bytes = bounded_put(self._paths, path, encoded(self._string, path), _CACHE_MAX)
        return b"".join((
            self._ms_bytes, uuid7_tail(), self._ts_bytes,
            strings.get(site) or self._cached(site),
            path_bytes,
            ref,
            strings.get(event) or self._cached(event),
            _NO_PROPS if not props else encoded(self._props, props),
            strings.get(user_agent) or self._cached(user_agent),
            self._len32 + pseudo if len(pseudo) == 32 else encoded(self._string, pseudonym),
            _DATACENTER[datacenter],
            strings.get(country) or self._cached(country),
        ))

    def batch(self, items: list[bytes]) -> bytes:
        if not items:  # Avro writes an empty array as its end marker alone
            return self.header + b"\x00"
        return b"".join((self.header, encoded(self._count, len(items)), *items, b"\x00"))


def beacon_encoder(codec: Codec) -> PieceEncoder | DictEncoder:
    try:
        return PieceEncoder(codec)
    except Unavailable:
        return DictEncoder(codec)
