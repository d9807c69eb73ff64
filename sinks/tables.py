"""How each topic's records become rows: the target table, its columns, and a row builder.

Row builders take the record's bytes and return rows in column order, or raise
Rejected with a named reason; the sink sends rejected records to bad-rows.

Pageviews, the high-volume topic, also have a pass-through path: a
`pageview_batch` body is `source_partition, source_offset, items[]`, and the
Avro encoding of the items array is one block of concatenated `Pageview`
records. Those bytes are already a valid Avro object-container data block, so
the sink wraps them in a container header and lets ClickHouse parse them
(`FORMAT Avro`), with no per-row Python work. The Python row builder stays as
the fallback that isolates a corrupt record.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from typing import Any

from tally.schemas.avro_writer import encode_long
from tally.schemas.catalog import check as check_product_event
from tally.schemas.codec import MAGIC, Codec, DecodeError, SchemaVersion, long_at
from tally.schemas.layouts import PAGEVIEW
from tally.schemas.reasons import BadRowReason

from tally.topics import AGGREGATES, BAD_ROWS, DROPS, PAGEVIEWS_ENRICHED, PRODUCT_EVENTS, SESSIONS

PAGEVIEW_COLUMNS = PAGEVIEW.names  # the pageviews table's columns are the pageview's fields
AGGREGATE_COLUMNS = ("kind", "scope", "dimension", "window_start", "window_end", "partition",
                     "count", "uniques", "version")
AGGREGATE_KINDS = frozenset({"site_hour", "site_day", "site_month", "path_day",
                             "product_family_day", "active_workspaces_day",
                             # sessions (streams/sessions.py): counted in the hour or day they started
                             "visits_hour", "bounces_hour", "visit_duration_hour", "entry_page_day", "exit_page_day"})
PRODUCT_COLUMNS = ("event_id", "event", "feature_area", "tenant_id", "workspace_id", "actor_type",
                   "actor_id", "subject_type", "subject_id", "occurred_at", "app", "metadata")
DROP_COLUMNS = ("site", "day", "reason", "component", "count", "source_partition", "source_offset")
SESSION_COLUMNS = ("site", "visitor_id", "session_start", "session_end", "partition", "entry_page", "exit_page",
                   "pageviews", "events", "duration_ms", "bounce", "referrer_source", "referrer_host", "utm_source",
                   "utm_medium", "utm_campaign", "device", "browser", "os", "country", "utm_content", "utm_term",
                   "version", "deleted")
_BOUNCE, _DELETED = SESSION_COLUMNS.index("bounce"), SESSION_COLUMNS.index("deleted")
BAD_ROW_COLUMNS = ("failed_at", "component", "reason", "detail", "source_topic", "source_partition",
                   "source_offset", "original")


class Rejected(ValueError):
    """A record the sink cannot store, and why."""

    def __init__(self, reason: BadRowReason, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


@dataclass(frozen=True)
class TableMapping:
    topic: str  # without prefix
    table: str
    columns: tuple[str, ...]
    rows: Callable[[Codec, bytes], list[list[Any]]]
    schema: str  # the Avro schema name of the topic's records
    passthrough: bool = False  # items can be handed to ClickHouse as Avro (see module doc)


def _ts(value: int | datetime) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromtimestamp(value / 1000, tz=UTC)


def _decode(codec: Codec, name: str, value: bytes) -> dict[str, Any]:
    try:
        return codec.decode(name, value)
    except DecodeError as exc:
        raise Rejected(BadRowReason.UNDECODABLE, str(exc)) from None


def pageview_rows(codec: Codec, value: bytes) -> list[list[Any]]:
    batch = _decode(codec, "pageview_batch", value)
    rows = []
    for pv in batch["items"]:
        row = [pv[c] for c in PAGEVIEW_COLUMNS]
        row[0] = pv["event_id"] if isinstance(pv["event_id"], uuid.UUID) else uuid.UUID(str(pv["event_id"]))
        row[1] = _ts(row[1])
        rows.append(row)
    return rows


def aggregate_rows(codec: Codec, value: bytes) -> list[list[Any]]:
    a = _decode(codec, "window_aggregate", value)
    if a["kind"] not in AGGREGATE_KINDS:
        raise Rejected(BadRowReason.INVALID_AGGREGATE, f"kind {a['kind']!r} is not one of {sorted(AGGREGATE_KINDS)}")
    for name in ("count", "uniques", "version", "partition"):
        if a[name] < 0:
            raise Rejected(BadRowReason.INVALID_AGGREGATE, f"{name} must be >= 0, got {a[name]}")
    return [[a["kind"], a["scope"], a["dimension"], _ts(a["window_start"]), _ts(a["window_end"]),
             a["partition"], a["count"], a["uniques"], a["version"]]]


def session_rows(codec: Codec, value: bytes) -> list[list[Any]]:
    """The rows of a `session_batch` record, or of one `session` record (as workers wrote
    before sessions were batched)."""
    writer = codec.writer_name(value)
    if writer == "session":
        records = [_decode(codec, "session", value)]
    elif writer is not None or value[:1] != b"\x00":
        records = _decode(codec, "session_batch", value)["items"]
    else:  # Confluent framed: the registry knows which of the two it is
        try:
            records = _decode(codec, "session_batch", value)["items"]
        except Rejected:
            records = [_decode(codec, "session", value)]
    rows = []
    for r in records:
        for name in ("pageviews", "events", "duration_ms", "version", "partition"):
            if r[name] < 0:
                raise Rejected(BadRowReason.INVALID_SESSION, f"{name} must be >= 0, got {r[name]}")
        row = [r[c] for c in SESSION_COLUMNS]
        row[2], row[3] = _ts(row[2]), _ts(row[3])
        row[_BOUNCE], row[_DELETED] = int(row[_BOUNCE]), int(row[_DELETED])
        rows.append(row)
    return rows


def _metadata_value(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def product_rows(codec: Codec, value: bytes) -> list[list[Any]]:
    e = _decode(codec, "product_event", value)
    problem = check_product_event(e)  # the catalog is the one validator (defence in depth)
    if problem:
        raise Rejected(BadRowReason.INVALID_EVENT, f"{problem[0]}: {problem[1]}")
    meta = {k: _metadata_value(v) for k, v in (e.get("metadata") or {}).items()}
    event_id = e["event_id"] if isinstance(e["event_id"], uuid.UUID) else uuid.UUID(str(e["event_id"]))
    return [[event_id, e["event"], e["feature_area"], e["tenant_id"], e["workspace_id"], e["actor_type"],
             e["actor_id"], e["subject_type"], e["subject_id"], _ts(e["occurred_at"]), e["app"], meta]]


def drop_rows(codec: Codec, value: bytes) -> list[list[Any]]:
    d = _decode(codec, "drop_count", value)
    if d["count"] < 0:
        raise Rejected(BadRowReason.INVALID_DROP, f"count must be >= 0, got {d['count']}")
    day = d["day"] if isinstance(d["day"], date) else date.fromordinal(date(1970, 1, 1).toordinal() + d["day"])
    return [[d["site"], day, d["reason"], d["component"], d["count"], d["source_partition"], d["source_offset"]]]


def bad_row_rows(codec: Codec, value: bytes) -> list[list[Any]]:
    b = _decode(codec, "bad_row", value)
    return [[_ts(b["failed_at"]), b["component"], b["reason"], b["detail"], b["source_topic"],
             b["source_partition"], b["source_offset"], bytes(b["original"])]]


MAPPINGS = (
    TableMapping(PAGEVIEWS_ENRICHED, "pageviews", PAGEVIEW_COLUMNS, pageview_rows, "pageview_batch",
                 passthrough=True),
    TableMapping(AGGREGATES, "aggregates", AGGREGATE_COLUMNS, aggregate_rows, "window_aggregate"),
    TableMapping(SESSIONS, "sessions", SESSION_COLUMNS, session_rows, "session_batch"),
    TableMapping(PRODUCT_EVENTS, "product_events", PRODUCT_COLUMNS, product_rows, "product_event"),
    TableMapping(DROPS, "drops", DROP_COLUMNS, drop_rows, "drop_count"),
    TableMapping(BAD_ROWS, "bad_rows", BAD_ROW_COLUMNS, bad_row_rows, "bad_row"),
)


# --- Avro pass-through ---------------------------------------------------------------

@dataclass
class ItemFrames:
    """Items of one writer schema version, collected as Avro container blocks."""

    version: SchemaVersion
    columns: tuple[str, ...]
    blocks: list[bytes | memoryview] = field(default_factory=list)
    rows: int = 0


class Passthrough:
    """Splits `pageview_batch` records into (writer version, item count, item bytes)
    and builds the Avro object container ClickHouse reads."""

    def __init__(self, codec: Codec, schema: str, table_columns: tuple[str, ...]) -> None:
        self.by_fp = {v.fingerprint: v for v in codec.versions[schema]}
        self.table_columns = table_columns
        self.sync = os.urandom(16)
        self._headers: dict[bytes, tuple[bytes, tuple[str, ...]]] = {}

    def header(self, version: SchemaVersion) -> tuple[bytes, tuple[str, ...]]:
        cached = self._headers.get(version.fingerprint)
        if cached is None:
            items = next(f for f in version.raw["fields"] if f["name"] == "items")["type"]["items"]
            names = {f["name"] for f in items["fields"]}
            schema = json.dumps(items).encode()
            head = bytearray(b"Obj\x01")
            head += encode_long(2)
            for key, val in ((b"avro.schema", schema), (b"avro.codec", b"null")):
                head += encode_long(len(key)) + key + encode_long(len(val)) + val
            head += encode_long(0) + self.sync
            cached = (bytes(head), tuple(c for c in self.table_columns if c in names))
            self._headers[version.fingerprint] = cached
        return cached

    def split(self, data: bytes) -> tuple[SchemaVersion, int, bytes | memoryview]:
        """(writer version, item count, item bytes) of one record; DecodeError when the
        record is not a single-block pageview_batch of a known version."""
        if len(data) < 11 or data[:2] != MAGIC:
            raise DecodeError("not Avro single-object encoding (missing C3 01 marker)")
        version = self.by_fp.get(bytes(data[2:10]))
        if version is None:
            raise DecodeError(f"fingerprint {bytes(data[2:10]).hex()} is not a known pageview_batch version")
        _, pos = long_at(data, 10)  # source_partition
        _, pos = long_at(data, pos)  # source_offset
        count, pos = long_at(data, pos)
        if count == 0:
            if pos != len(data):
                raise DecodeError("trailing bytes after an empty items array")
            return version, 0, b""
        if count < 0:  # a block with its byte size
            count = -count
            size, pos = long_at(data, pos)
            if pos + size + 1 != len(data):
                raise DecodeError("items array is not a single block")
        # The array is the last field: its terminating 0 is the record's last byte.
        if data[-1] != 0:
            raise DecodeError("items array is not terminated")
        return version, count, memoryview(data)[pos:-1]  # a view: the bytes are copied once, to the file

    def container_parts(self, frames: ItemFrames) -> list[bytes | memoryview]:
        """The container as pieces, to be written out without joining them first."""
        head, _ = self.header(frames.version)
        return [head, *frames.blocks]

    def container(self, frames: ItemFrames) -> bytes:
        return b"".join(self.container_parts(frames))

    def add(self, frames: dict[bytes, ItemFrames], data: bytes) -> tuple[bytes, int]:
        """Append one record's items to `frames`; return (writer fingerprint, item count)."""
        version, count, body = self.split(data)
        if count:
            f = frames.get(version.fingerprint)
            if f is None:
                f = frames[version.fingerprint] = ItemFrames(version, self.header(version)[1])
            f.blocks += (encode_long(count) + encode_long(len(body)), body, self.sync)
            f.rows += count
        return version.fingerprint, count
