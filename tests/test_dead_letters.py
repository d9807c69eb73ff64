"""Redacted dead letters (issue #15 item 5): a bad row keeps the reason, where the record came
from and a redacted original: no pseudonym, no query string, no offending value."""

from __future__ import annotations

from datetime import UTC, datetime

from tally.schemas.codec import default_codec
from tally.schemas.reasons import BadRowReason, Component
from tally.schemas.records import bad_row, redact_bytes, redact_text
from tally.streams import beacons as stage1
from tally.streams.projection import reader

from tally.config import VARIABLES
from tests.stream_support import beacon

PSEUDONYM = "9f86d081884c7d659a2feaa0c55ad015"
CANARIES = ["bob@example.com", PSEUDONYM, "203.0.113.7", "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
            "4111111111111111", "DE89370400440532013000", "secret-query-value"]


def test_redact_text_cuts_queries_and_replaces_personal_tokens():
    assert redact_text("/u/bob@example.com/x?token=secret-query-value") == "/u/:email/x?:query"
    assert redact_text(f"ip {PSEUDONYM} from 203.0.113.7") == "ip :uuid from :ip"
    assert redact_text("report.created: metadata key 'project_id' looks like a token") == \
        "report.created: metadata key 'project_id' looks like a token"


def test_a_bad_row_of_raw_bytes_keeps_no_canary():
    raw = b"\x00\x02" + " ".join(CANARIES[:-1]).encode() + b"\x10/p?q=secret-query-value\x00"
    row = bad_row(BadRowReason.UNDECODABLE, f"cannot decode {CANARIES[0]} at {CANARIES[2]}", Component.SINK,
                  "t", 3, 9, raw)
    blob = row["original"] + row["detail"].encode()
    assert [c for c in CANARIES if c.encode() in blob] == []
    assert (row["reason"], row["source_topic"], row["source_partition"], row["source_offset"]) == (
        "undecodable", "t", 3, 9)
    assert redact_bytes(b"\x00not avro at all") == b"\x00not avro at all"  # nothing personal: kept


def test_a_beacon_dead_letter_is_a_redacted_beacon_on_both_worker_paths():
    codec = default_codec()
    now = datetime.now(UTC)
    b = beacon(received_at=now, path="/u/bob@example.com?utm_source=x&q=secret-query-value",
               referrer="https://r.example/p?email=bob@example.com", ip=PSEUDONYM)
    b["props"] = {"card": "4111111111111111"}
    value = codec.encode("beacon_batch", {"items": [b]})
    cfg = stage1.Stage1Config(partitions=4, salt_period="day", lateness_ms=48 * 3600_000, spam=frozenset())
    now_ms = int(now.timestamp() * 1000)
    slow = stage1.process_batch(codec, reader(codec, "beacon_batch")(value), 1, 5, {}, cfg, now_ms)
    fast_stage = stage1.FastStage1(codec, cfg)
    body, items = fast_stage.read(value)
    fast = fast_stage.process(body, items, 1, 5, {}, now_ms)
    rows = slow.bad_rows + fast.bad_rows
    assert len(rows) == 2
    for row in rows:
        assert row["reason"] == "no_salt"
        [kept] = codec.decode("beacon_batch", row["original"])["items"]
        assert kept["ip_pseudonym"] == "" and kept["props"] == {}
        assert kept["path"] == "/u/:email" and kept["referrer"] == "https://r.example"
        assert str(kept["event_id"]) == b["event_id"]  # still traceable to its source
        assert [c for c in CANARIES if c.encode() in row["original"]] == []


def test_bad_rows_live_seven_days_by_default():
    [var] = [v for v in VARIABLES if v.env == "TALLY_BAD_ROWS_RETENTION_DAYS"]
    assert var.default == "7"


def test_empty_user_agents_are_recorded_by_default_and_dropped_when_configured():
    """Seed 002: a beacon without a user agent counts unless TALLY_DROP_EMPTY_UA is on (both worker paths)."""
    codec = default_codec()
    now = datetime.now(UTC)
    value = codec.encode("beacon_batch", {"items": [beacon(received_at=now, ua="")]})
    now_ms = int(now.timestamp() * 1000)
    salts = {stage1.period_of(now_ms, "day"): b"s" * 32}
    for drop, accepted, drops in ((False, 1, []), (True, 0, ["empty_user_agent"])):
        cfg = stage1.Stage1Config(partitions=2, salt_period="day", lateness_ms=48 * 3600_000, drop_empty_ua=drop)
        slow = stage1.process_batch(codec, reader(codec, "beacon_batch")(value), 0, 1, salts, cfg, now_ms)
        fast_stage = stage1.FastStage1(codec, cfg)
        fast = fast_stage.process(*fast_stage.read(value), 0, 1, salts, now_ms)
        for out in (slow, fast):
            assert out.accepted == accepted and [d["reason"] for d in out.drops] == drops
