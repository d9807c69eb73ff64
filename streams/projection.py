"""Projected Avro readers for the worker's hot path.

The full decode (tally.schemas.codec) turns every timestamp into a datetime and every uuid into
a UUID, and builds every field. The worker needs neither: it reads timestamps as epoch
milliseconds and ids as strings, and stage 2 needs 6 of a pageview's 17 fields. Avro schema
resolution does this for us: we read with a *reader schema* derived from the repo's newest
schema (logical types dropped, unneeded fields left out) and fastavro skips the rest in C.
Records in the Confluent wire format go through the codec's normal path and are converted.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Callable
from datetime import datetime
from typing import Any

import fastavro
from fastavro.schema import parse_schema
from tally.schemas.codec import MAGIC, Codec, DecodeError
from tally.schemas.layouts import plain_type

from tally.clock import epoch_ms


def _project(raw: dict[str, Any], keep_items: set[str] | None) -> dict[str, Any]:
    schema = plain_type(copy.deepcopy(raw))
    if keep_items is not None:
        items = next(f for f in schema["fields"] if f["name"] == "items")["type"]["items"]
        items["fields"] = [f for f in items["fields"] if f["name"] in keep_items]
    return schema


def _plain_values(v: Any) -> Any:
    if isinstance(v, datetime):
        return epoch_ms(v)
    if isinstance(v, dict):
        return {k: _plain_values(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain_values(x) for x in v]
    if v.__class__.__name__ == "UUID":
        return str(v)
    return v


def reader(codec: Codec, name: str, keep_items: set[str] | None = None) -> Callable[[bytes], dict[str, Any]]:
    """A decode function for `name` records: timestamps as ms, uuids as str, items projected."""
    projected = parse_schema(_project(codec.latest(name).raw, keep_items), _write_hint=True)
    # The writer schemas without their logical types: same bytes on the wire, but fastavro
    # then hands us plain longs and strings instead of building datetimes and UUIDs.
    by_fp = {v.fingerprint: parse_schema(plain_type(v.raw), _write_hint=True) for v in codec.versions[name]}

    def decode(data: bytes) -> dict[str, Any]:
        if data[:2] == MAGIC and len(data) >= 10:
            writer = by_fp.get(bytes(data[2:10]))
            if writer is not None:
                try:
                    return fastavro.schemaless_reader(io.BytesIO(data[10:]), writer, projected)
                except Exception as exc:
                    raise DecodeError(f"corrupt {name} body: {exc}") from None
        return _plain_values(codec.decode(name, data))  # other encodings, or the codec's error

    return decode


PAGEVIEW_FIELDS = {"event_id", "received_at", "site", "path", "event", "visitor_id"}
# and what a session keeps of its entry pageview (windows.pageview_attrs)
SESSION_FIELDS = {"referrer_source", "referrer_host", "utm_source", "utm_medium", "utm_campaign", "utm_content",
                  "utm_term", "device", "browser", "os", "country"}
