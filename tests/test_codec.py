"""Avro single-object encoding round trips and rejects what it cannot read."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from tally.schemas.avro_writer import encode_long
from tally.schemas.codec import MAGIC, DecodeError, default_codec, long_at


def beacon() -> dict:
    return {"event_id": str(uuid.uuid4()), "received_at": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "site": "example.com", "path": "/", "referrer": None, "event": "pageview", "props": {},
            "user_agent": "ua", "ip_pseudonym": "ab" * 16, "datacenter": False}


def test_round_trip_single_object_encoding():
    codec = default_codec()
    rec = beacon()
    data = codec.encode("beacon_batch", {"items": [rec]})
    assert data[:2] == MAGIC and data[2:10] == codec.latest("beacon_batch").fingerprint
    out = codec.decode("beacon_batch", data)["items"][0]
    assert str(out["event_id"]) == rec["event_id"] and out["received_at"] == rec["received_at"]
    assert out["site"] == "example.com"


@pytest.mark.parametrize("data", [b"", b"{}", b"\xc3\x01" + b"\x00" * 8 + b"x", b"\xc3\x01"])
def test_garbage_is_a_decode_error(data):
    with pytest.raises(DecodeError):
        default_codec().decode("beacon_batch", data)


def test_wrong_schema_is_a_decode_error():
    codec = default_codec()
    data = codec.encode("beacon_batch", {"items": []})
    with pytest.raises(DecodeError, match="expected 'pageview_batch'"):
        codec.decode("pageview_batch", data)


def test_long_at_reads_what_encode_long_writes_and_rejects_bad_varints():
    for n in (0, 1, -1, 63, -64, 64, 300, -(1 << 63), (1 << 63) - 1):
        data = b"\x07" + encode_long(n) + b"\x00"
        assert long_at(data, 1) == (n, len(data) - 1)
        assert long_at(memoryview(data), 1) == (n, len(data) - 1)
    with pytest.raises(DecodeError, match="truncated"):
        long_at(encode_long(1 << 40)[:-1], 0)
    with pytest.raises(DecodeError, match="longer than 10 bytes"):
        long_at(b"\xff" * 11 + b"\x01", 0)


def test_bounded_caches_empty_when_full_and_keep_what_comes_next():
    from tally.caches import bounded_add, bounded_put

    cache: dict[int, str] = {}
    for i in range(5):
        assert bounded_put(cache, i, str(i), 3) == str(i)
    assert cache == {3: "3", 4: "4"}  # emptied when the 4th came, then refilled
    seen: set[int] = set()
    for i in range(7):
        bounded_add(seen, i, 3)
    assert seen == {6} and len(seen) <= 3
