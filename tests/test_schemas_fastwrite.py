"""The compiled writer is byte-identical to fastavro on every schema in the repo."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, date, datetime

import fastavro
import pytest
from fastavro.utils import generate_many
from tally.schemas.codec import MAGIC, default_codec
from tally.schemas.fastwrite import compile_writer

CODEC = default_codec()


def _fastavro(schema, record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(CODEC.versions))
def test_same_bytes_as_fastavro_on_generated_records(name):
    v = CODEC.latest(name)
    write = compile_writer(v.parsed)
    for record in generate_many(v.raw, 200):
        out: list[bytes] = []
        write(record, out)
        assert b"".join(out) == _fastavro(v.writer, record)


def test_logical_types_and_defaults_match():
    v = CODEC.latest("product_event")
    rec = {"event_id": uuid.uuid4(), "event": "report.created", "feature_area": "report",
           "tenant_id": "t", "workspace_id": "w", "occurred_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
           "metadata": {"a": None, "b": True, "c": -5, "d": "x" * 300, "é": 2**40}}
    data = CODEC.encode("product_event", rec)
    assert data == MAGIC + v.fingerprint + _fastavro(v.writer, rec)
    back = CODEC.decode("product_event", data)
    assert back["event_id"] == rec["event_id"] and back["occurred_at"] == rec["occurred_at"].replace(microsecond=678000)
    assert back["actor_type"] == "user" and back["metadata"] == rec["metadata"]
    day = CODEC.encode("drop_count", {"site": "s", "day": date(2026, 1, 2), "reason": "bot", "count": 3,
                                      "component": "worker"})
    assert CODEC.decode("drop_count", day)["day"] == date(2026, 1, 2)


def test_unusual_values_fall_back_to_fastavro_errors():
    with pytest.raises((ValueError, TypeError)):
        CODEC.encode("product_event", {"event_id": "x", "event": 3})
    # naive datetime: fastavro's own semantics (local time), via the fallback
    naive = datetime(2026, 1, 2)
    rec = {"kind": "k", "scope": "s", "window_start": naive, "window_end": naive, "partition": 0,
           "count": 1, "uniques": 1, "version": 1}
    v = CODEC.latest("window_aggregate")
    assert CODEC.encode("window_aggregate", rec) == MAGIC + v.fingerprint + _fastavro(v.writer, rec)


def test_cached_pairs_keep_bool_and_int_apart():
    v = CODEC.latest("product_event")
    base = {"event_id": str(uuid.uuid4()), "event": "e.x", "feature_area": "e", "tenant_id": "t",
            "workspace_id": "w", "occurred_at": 5}
    for meta in ({"a": 1}, {"a": True}, {"a": 1}, {"a": "1"}, {"a": None}, {"a": False}, {"a": 0}):
        rec = {**base, "metadata": meta}
        assert CODEC.encode("product_event", rec) == MAGIC + v.fingerprint + _fastavro(v.writer, rec)
        assert CODEC.decode("product_event", CODEC.encode("product_event", rec))["metadata"] == meta
        assert type(CODEC.decode("product_event", CODEC.encode("product_event", rec))["metadata"]["a"]) is type(meta["a"])
