"""A topic deleted and created again under a running sink starts its offsets at 0: the new
records sit at the offsets the old ones had. The sink's deduplication tokens carry the topic
id, so ClickHouse does not take the new inserts for repeats of the old ones (real broker,
real chDB)."""

from __future__ import annotations

import pytest
from tally.ops.stack import http_ok

from tally.topics import admin, ensure_topics
from tests.conftest import Env, wait_for
from tests.helpers import query_rows
from tests.sink_records import Records, recent_days

pytestmark = pytest.mark.integration


def recreate(s, topic: str) -> None:
    client = admin(s)
    client.delete_topics([topic])[topic].result(timeout=30)
    wait_for(lambda: topic not in client.list_topics(timeout=10).topics, 60, "topic deleted")
    wait_for(lambda: not ensure_topics(s).warnings and topic in client.list_topics(timeout=10).topics, 60,
             "topic created again")


def start_sink(spawn, env: Env):
    sink = spawn(env, "sink")
    s = env.settings
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    return sink


def produce_round(s, n: int) -> None:
    """n pageviews with new event_ids, spread over the topic's partitions."""
    records = Records(s, partitions=s.topic_partitions)
    records.pageviews(n, recent_days(1))
    records.flush()


def assert_all_stored(s, sink, total: int) -> None:
    """Every row of both rounds, once. FINAL, as the analysts' views read raw rows: the sink's
    rewind of a recreated topic can read records it already holds a second time (at least
    once, as on any replay); ReplacingMergeTree folds them by event_id."""
    try:
        wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews FINAL")[0][0] == total, 90, "second round")
    except AssertionError:
        print(sink.output()[-4000:])
        raise
    assert query_rows(s, "SELECT uniqExact(event_id) FROM pageviews")[0][0] == total
    assert sink.alive()


def test_a_recreated_topic_under_the_sink_loses_no_new_row(tally_env, spawn):
    # One batch per round (2 s of records produced at once), so both rounds cover the same
    # offset ranges: without the topic id their tokens would be equal.
    env = Env({**tally_env.vars, "TALLY_SINK_BATCH_SECONDS": "2"})
    s = env.settings
    sink = start_sink(spawn, env)
    produce_round(s, 100)
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] == 100, 60, "first round")

    recreate(s, s.topic("pageviews.enriched"))
    produce_round(s, 100)  # at the offsets the first round had
    assert_all_stored(s, sink, 200)


def test_a_topic_recreated_while_the_sink_is_stopped_is_read_from_its_start(tally_env, spawn):
    # The old incarnation held more records than the new one will: a sink resuming at its
    # saved positions would skip the new records. (Kafka drops a deleted topic's committed
    # offsets, so the sink starts from the new topic's beginning; this pins that.)
    env = Env({**tally_env.vars, "TALLY_SINK_BATCH_SECONDS": "2"})
    s = env.settings
    sink = start_sink(spawn, env)
    produce_round(s, 200)  # the old incarnation grows past what the new one will hold
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] == 200, 60, "first round")
    sink.stop()

    recreate(s, s.topic("pageviews.enriched"))
    produce_round(s, 100)
    assert_all_stored(s, start_sink(spawn, env), 300)
