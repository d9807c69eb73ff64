"""The record layouts that hand-written code depends on, each declared once.

Some code reads or writes Avro bytes field by field, for speed, and so depends on the order
and types of a record's fields: the collector's beacon encoder (producers/collector/
encode.py), the worker's beacon reader and pageview writer (streams/avro_bytes.py) and the
SDK's event pieces (producers/sdk/pieces.py). The sink's pageview columns follow the
pageview's fields too. Their layouts are declared here, in the .avsc's own terms.

At import, each declaration is checked against the newest .avsc (`Layout.current`). When a
schema changes shape and the code does not, the byte-level paths turn themselves off (the
codec takes over; a warning says so) and tests/test_layouts.py fails, so the change is seen.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from typing import Any

from tally.schemas.codec import SCHEMA_DIR, load_versions

log = logging.getLogger(__name__)

_LOGICAL_BASE = {"timestamp-millis": "long", "uuid": "string", "date": "int"}


def plain_type(t: Any) -> Any:
    """An Avro type without its logical types (same bytes; values stay ints and strings)."""
    if isinstance(t, dict):
        if isinstance(t.get("type"), str) and (t.get("logicalType") in _LOGICAL_BASE or t.keys() == {"type"}):
            return t["type"]
        return {k: plain_type(v) for k, v in t.items()}
    if isinstance(t, list):
        return [plain_type(x) for x in t]
    return t


def _canonical(fields: Any) -> str:
    return json.dumps(fields, sort_keys=True)


@dataclass(frozen=True)
class Layout:
    schema: str  # the Avro schema's name (schemas/avro/<schema>.v<N>.avsc)
    path: tuple[str, ...]  # () for the top-level record; ("items",) for the items of a batch
    fields: tuple[tuple[str, Any], ...]  # (name, Avro type as the .avsc writes it), in order
    current: bool = field(default=False, compare=False)  # the newest .avsc has this layout

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(name for name, _ in self.fields)

    def record(self, raw_schema: dict[str, Any]) -> dict[str, Any]:
        """The record this layout describes, inside one schema version's JSON."""
        record = raw_schema
        for name in self.path:
            t = next(f for f in record["fields"] if f["name"] == name)["type"]
            record = t["items"] if isinstance(t, dict) and t.get("type") == "array" else t
        return record

    def of(self, raw_schema: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
        """The (name, type) fields of that record in a schema version."""
        return tuple((f["name"], f["type"]) for f in self.record(raw_schema)["fields"])

    def matches(self, raw_schema: dict[str, Any], plain: bool = False) -> bool:
        """True when the version has this layout. plain=True compares without logical types
        (for readers that take timestamps as longs and uuids as strings)."""
        ours, theirs = [list(f) for f in self.fields], [list(f) for f in self.of(raw_schema)]
        if plain:
            ours, theirs = plain_type(ours), plain_type(theirs)
        return _canonical(ours) == _canonical(theirs)


def _checked(layout: Layout) -> Layout:
    newest = load_versions(SCHEMA_DIR)[layout.schema][-1]
    current = layout.matches(newest.raw)
    if not current:
        log.warning("%s no longer has the layout declared in schemas/layouts.py: the byte-level "
                    "code that depends on it falls back to the codec", newest.path.name)
    return Layout(layout.schema, layout.path, layout.fields, current)


_STRING_MAP = {"type": "map", "values": "string"}
_UUID = {"type": "string", "logicalType": "uuid"}
_MILLIS = {"type": "long", "logicalType": "timestamp-millis"}
_OPTIONAL = ["null", "string"]

BEACON = _checked(Layout("beacon_batch", ("items",), (
    ("event_id", _UUID), ("received_at", _MILLIS), ("site", "string"), ("path", "string"),
    ("referrer", _OPTIONAL), ("event", "string"), ("props", _STRING_MAP), ("user_agent", "string"),
    ("ip_pseudonym", "string"), ("datacenter", "boolean"), ("country", "string"),
)))
PAGEVIEW = _checked(Layout("pageview_batch", ("items",), (
    ("event_id", _UUID), ("received_at", _MILLIS), ("site", "string"), ("hostname", "string"),
    ("path", "string"), ("event", "string"), ("visitor_id", "long"), ("referrer_host", "string"),
    ("referrer_source", "string"), ("utm_source", _OPTIONAL), ("utm_medium", _OPTIONAL),
    ("utm_campaign", _OPTIONAL), ("utm_content", _OPTIONAL), ("utm_term", _OPTIONAL), ("browser", "string"), ("os", "string"), ("device", "string"),
    ("user_agent", _OPTIONAL), ("props", _STRING_MAP), ("country", "string"),
)))
PRODUCT_EVENT = _checked(Layout("product_event", (), (
    ("event_id", _UUID), ("event", "string"), ("feature_area", "string"), ("tenant_id", "string"),
    ("workspace_id", "string"), ("actor_type", "string"), ("actor_id", "string"),
    ("subject_type", "string"), ("subject_id", _OPTIONAL), ("occurred_at", _MILLIS), ("app", "string"),
    ("metadata", {"type": "map", "values": ["null", "boolean", "long", "string"]}),
)))
LAYOUTS = (BEACON, PAGEVIEW, PRODUCT_EVENT)
