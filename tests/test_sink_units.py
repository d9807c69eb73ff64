"""Pure logic of the sink: deduplication tokens, replay intents, the Avro pass-through
framing, and the row builders' rejections."""

from __future__ import annotations

import io
import uuid

import fastavro
import pytest
from tally.schemas.codec import DecodeError, default_codec
from tally.sinks.batch import Batch, dedup_token, intent_metadata, opened_at, parse_intent
from tally.sinks.tables import (
    PAGEVIEW_COLUMNS,
    SESSION_COLUMNS,
    Passthrough,
    Rejected,
    aggregate_rows,
    pageview_rows,
    product_rows,
    session_rows,
)

from tests.sink_records import pageview


def test_token_depends_on_table_and_every_range_not_on_order():
    a = {("t.pv", 0): [10, 20], ("t.pv", 3): [5, 9]}
    b = {("t.pv", 3): [5, 9], ("t.pv", 0): [10, 20]}
    assert dedup_token("pageviews", a) == dedup_token("pageviews", b)
    assert dedup_token("pageviews", a) != dedup_token("drops", a)
    assert dedup_token("pageviews", a) != dedup_token("pageviews", {**a, ("t.pv", 0): [10, 21]})
    assert dedup_token("pageviews", a) != dedup_token("pageviews", {("t.pv", 0): [10, 20]})
    # The same offsets of a recreated topic (a new topic id) are other records.
    assert dedup_token("pageviews", a, {"t.pv": "id-1"}) == dedup_token("pageviews", b, {"t.pv": "id-1"})
    assert dedup_token("pageviews", a, {"t.pv": "id-1"}) != dedup_token("pageviews", a, {"t.pv": "id-2"})


def test_intent_round_trip_and_foreign_metadata():
    assert parse_intent(intent_metadata(12345)) == 12345
    for other in (None, "", "something else", "tally-sink:v1:end=abc"):
        assert parse_intent(other) is None


def test_batch_ranges_per_topic():
    b = Batch()
    for off in (7, 5, 6):
        b.note("t.pv", 1, off)
    b.note("t.drops", 0, 3)
    assert b.ranges_of("t.pv") == {("t.pv", 1): [5, 7]}
    assert not b.empty


def _items(n: int) -> list[dict]:
    return [pageview(str(uuid.uuid4()), 1_700_000_000_000 + i, "a.test", f"/{i}", i) for i in range(n)]


def test_passthrough_blocks_are_the_items_clickhouse_will_read():
    codec = default_codec()
    pt = Passthrough(codec, "pageview_batch", PAGEVIEW_COLUMNS)
    items = _items(3)
    record = codec.encode("pageview_batch", {"source_partition": 2, "source_offset": 99, "items": items})
    version, count, body = pt.split(record)
    assert count == 3 and version.name == "pageview_batch"
    item_schema = fastavro.parse_schema(next(f for f in version.raw["fields"] if f["name"] == "items")["type"]["items"])
    buf = io.BytesIO(body)
    decoded = [fastavro.schemaless_reader(buf, item_schema) for _ in range(count)]
    assert buf.tell() == len(body)
    assert [str(d["event_id"]) for d in decoded] == [i["event_id"] for i in items]
    # A whole container decodes with a stock Avro reader too.
    frames: dict = {}
    pt.add(frames, record)
    pt.add(frames, codec.encode("pageview_batch", {"source_partition": 0, "source_offset": 1, "items": _items(2)}))
    (f,) = frames.values()
    assert f.rows == 5 and len(list(fastavro.reader(io.BytesIO(pt.container(f))))) == 5


def test_passthrough_refuses_what_it_cannot_frame():
    codec = default_codec()
    pt = Passthrough(codec, "pageview_batch", PAGEVIEW_COLUMNS)
    empty = codec.encode("pageview_batch", {"source_partition": 0, "source_offset": 0, "items": []})
    assert pt.split(empty)[1] == 0
    good = codec.encode("pageview_batch", {"source_partition": 0, "source_offset": 0, "items": _items(2)})
    for bad in (b"", b"\xc3\x01" + b"\x00" * 8 + b"\x02", good[:12],
                codec.encode("drop_count", {"site": "a", "day": 1, "reason": "bot", "count": 1, "component": "w"})):
        with pytest.raises(DecodeError):
            pt.split(bad)
    # A record cut inside its last item can still frame; ClickHouse then refuses the
    # block ("EOF reached") and the sink's record-by-record fallback rejects it.
    with pytest.raises(Rejected) as exc:
        pageview_rows(codec, good[:-1])
    assert exc.value.reason == "undecodable"


def test_row_builders_reject_with_named_reasons():
    codec = default_codec()
    with pytest.raises(Rejected) as exc:
        aggregate_rows(codec, codec.encode("window_aggregate", {
            "kind": "site_year", "scope": "a", "window_start": 0, "window_end": 1, "partition": 0,
            "count": 1, "uniques": 1, "version": 1}))
    assert exc.value.reason == "invalid_aggregate"
    event = {"event_id": str(uuid.uuid4()), "event": "report.created", "feature_area": "report",
             "tenant_id": "t1", "workspace_id": "", "actor_id": "u1", "occurred_at": 1_700_000_000_000,
             "metadata": {"report_type": "permission_posture"}}
    with pytest.raises(Rejected) as exc:
        product_rows(codec, codec.encode("product_event", event))
    assert exc.value.reason == "invalid_event" and "workspace_id" in exc.value.detail
    with pytest.raises(Rejected) as exc:
        product_rows(codec, b"junk")
    assert exc.value.reason == "undecodable"
    ok = product_rows(codec, codec.encode("product_event", {**event, "workspace_id": "w1",
                                                            "metadata": {"report_type": "x", "finding_count": 3}}))
    assert ok[0][-1] == {"report_type": "x", "finding_count": "3"}


def test_session_rows_of_a_batch_and_of_a_single_record_as_older_workers_wrote():
    from tally.streams.session_rows import SessionEncoder, session_record
    from tally.streams.sessions import one_event

    codec = default_codec()
    attrs = ("a.com", "search", "www.google.com", "news", "", "", "mobile", "Mobile Safari", "iOS", "DE", "", "")
    changes = {("a.com", 2**64 - 1, 0, 1_700_000_000_000): one_event(1_700_000_000_000, True, "/x", attrs),
               ("a.com", 5, 0, 1_700_000_060_000): None}
    ((_, batch),) = SessionEncoder(codec).batches(3, 17, changes)
    rows = session_rows(codec, batch)
    singles = [row for k, s in changes.items()
               for row in session_rows(codec, codec.encode("session", session_record(3, 17, k, s)))]
    assert rows == singles and len(rows) == 2
    bounce, deleted = SESSION_COLUMNS.index("bounce"), SESSION_COLUMNS.index("deleted")
    assert rows[0][:2] == ["a.com", -1] and rows[0][bounce] == 1 and rows[1][deleted] == 1  # a bounce; a removal
    bad = session_record(3, 17, ("a.com", 5, 0, 1), None) | {"pageviews": -1}
    for value in (codec.encode("session", bad), codec.encode("session_batch", {"items": [bad]})):
        with pytest.raises(Rejected) as exc:
            session_rows(codec, value)
        assert exc.value.reason == "invalid_session" and "pageviews" in exc.value.detail
    with pytest.raises(Rejected) as exc:
        session_rows(codec, codec.encode("drop_count", {"site": "a", "day": 0, "reason": "bot", "component": "worker",
                                                         "count": 1, "source_partition": 0, "source_offset": 0}))
    assert exc.value.reason == "undecodable"


def test_sql_literals_are_quoted_in_one_place():
    from tally.sinks.reports import literal
    from tally.sinks.sql import quote

    assert quote("it's a \\ test") == "'it\\'s a \\\\ test'"
    assert literal("o'clock") == quote("o'clock") and literal(7) == "7"


def test_topic_ids_after_a_move_backwards_only_a_lookup_sent_later_counts():
    """topic_ids.py's order, without a broker: the lookup thread is not started, its answers
    are set by hand (Answer carries when the lookup was sent)."""
    import time

    from tally.sinks.topic_ids import Answer, Lookup, TopicIds

    from tally.config import Settings

    ids = TopicIds(Lookup(Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": "127.0.0.1:1"}), ["a", "b"]))
    assert not ids.ready  # at start: no insert before a first answer sent after the start
    before = Answer(ids.fresh_after - 1, {"a": "A1", "b": "B1"})
    ids.lookup.latest = before
    assert ids.pending() is None
    first = Answer(time.monotonic() + 1, {"a": "A1", "b": "B1"})
    ids.lookup.latest = first
    assert ids.pending() is first and not ids.changed(first)
    ids.adopt(first)
    assert ids.ready and ids.held == {"a": "A1", "b": "B1"} and ids.pending() is None

    # Forwards on a partition: nothing to wait for. Backwards (a reset, a rewind): a move.
    for offset in (5, 6, 9):
        assert not ids.backward(("a", 0), offset)
        ids.read(("a", 0), offset)
    assert ids.backward(("a", 0), 0) and not ids.backward(("a", 1), 0)
    ids.moved()
    assert not ids.ready
    recreated = Answer(ids.fresh_after - 0.5, {"a": "A2", "b": "B1"})  # sent before the move
    ids.lookup.latest = recreated
    assert ids.pending() is None and ids.held["a"] == "A1"
    later = Answer(ids.fresh_after + 0.5, {"a": "A2", "b": "B1"})
    ids.lookup.latest = later
    assert ids.pending() is later and ids.changed(later) == {"a"}
    ids.adopt(later)
    assert ids.ready and ids.held == {"a": "A2", "b": "B1"}
    ids.forget([("a", 0)])
    assert not ids.backward(("a", 0), 0)


def test_a_retry_that_gives_up_resumes_consumption():
    # Found by tests/test_chaos_edge.py (broker SIGKILLed for 90 s): a commit that failed
    # 5 times left every partition paused, and the sink never read a record again.
    import threading

    from confluent_kafka import Consumer, KafkaException
    from tally.sinks.flow import Flow

    consumer = Consumer({"bootstrap.servers": "127.0.0.1:9", "group.id": "flow-unit", "log_level": 0})
    flow = Flow(consumer, threading.Event())

    def refuse() -> None:
        raise KafkaException("commit refused")

    try:
        with pytest.raises(KafkaException):
            flow.retry("commit offsets", refuse, retry_on=KafkaException, attempts=2)
        assert not flow.outage_paused
    finally:
        consumer.close()


def test_a_batch_taken_after_a_flush_counts_its_age_from_the_flush_start_at_most_half_a_period():
    assert opened_at(100.0, None, 1.0) == 100.0  # nothing waited (a consume found none): from now
    assert opened_at(100.0, 99.7, 1.0) == 99.7  # records waited through a 0.3 s flush
    assert opened_at(100.0, 98.0, 1.0) == 99.5  # a 2 s flush: half a period back at most
    assert opened_at(100.0, 100.2, 1.0) == 100.0  # never in the future
