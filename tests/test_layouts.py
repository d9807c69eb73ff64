"""The layouts that byte-level code depends on (schemas/layouts.py) against the .avsc files."""

from __future__ import annotations

import copy

from tally.schemas.codec import SCHEMA_DIR, load_versions
from tally.schemas.layouts import BEACON, LAYOUTS, PAGEVIEW, PRODUCT_EVENT, plain_type
from tally.sinks.tables import PAGEVIEW_COLUMNS


def test_every_declared_layout_is_the_newest_schemas():
    # Fails when a schema changes shape without the code that reads or writes its bytes:
    # in production that code steps aside for the codec; here the change must be seen.
    versions = load_versions(SCHEMA_DIR)
    for layout in LAYOUTS:
        newest = versions[layout.schema][-1]
        assert layout.current, f"{newest.path.name} changed shape; update schemas/layouts.py and its users"
        assert layout.of(newest.raw) == layout.fields


def test_a_changed_schema_does_not_match():
    raw = load_versions(SCHEMA_DIR)["beacon_batch"][-1].raw
    assert BEACON.matches(raw) and BEACON.matches(raw, plain=True)
    renamed = copy.deepcopy(raw)
    BEACON.record(renamed)["fields"][2]["name"] = "website"
    assert not BEACON.matches(renamed) and not BEACON.matches(renamed, plain=True)
    reordered = copy.deepcopy(raw)
    fields = BEACON.record(reordered)["fields"]
    fields[2], fields[3] = fields[3], fields[2]
    assert not BEACON.matches(reordered)
    widened = copy.deepcopy(raw)
    BEACON.record(widened)["fields"][-1]["type"] = "int"  # datacenter: boolean -> int
    assert not BEACON.matches(widened, plain=True)


def test_plain_matching_ignores_logical_types_only():
    raw = copy.deepcopy(load_versions(SCHEMA_DIR)["product_event"][-1].raw)
    raw["fields"][0]["type"] = "string"  # event_id without its uuid logical type: same bytes
    assert PRODUCT_EVENT.matches(raw, plain=True) and not PRODUCT_EVENT.matches(raw)
    assert plain_type({"type": "long", "logicalType": "timestamp-millis"}) == "long"
    assert plain_type({"type": "map", "values": "string"}) == {"type": "map", "values": "string"}


def test_the_sinks_pageview_columns_are_the_pageview_fields():
    assert PAGEVIEW.names == PAGEVIEW_COLUMNS
    assert PAGEVIEW.names[0] == "event_id" and "visitor_id" in PAGEVIEW.names
