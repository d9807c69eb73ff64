"""The sink on a real three-node cluster with one node SIGKILLed: a topic-id lookup that
reaches a dead node waits out its request timeout, and the sink's insert loop must not wait
with it (sinks/topic_ids.py). The sink runs in this process, on the real cluster and a real
chDB engine, so the test can hold one lookup unanswered for as long as it likes and watch
the inserts go on meanwhile: a behaviour, not a speed."""

from __future__ import annotations

import threading

import pytest
from tally.sinks.metrics import ROWS
from tally.sinks.migrate import migrate
from tally.sinks.sink import Sink
from tally.sinks.warehouse import connect

from tests.cluster import KafkaCluster
from tests.conftest import wait_for
from tests.sink_records import Records, recent_days

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


class HeldLookups:
    """The sink's real admin client, with each describe_topics call's thread recorded and,
    while `hold` is set, the call kept waiting before it goes to the broker."""

    def __init__(self, real) -> None:
        self.real = real
        self.threads: list[int] = []
        self.hold = threading.Event()
        self.release = threading.Event()
        self.waiting = threading.Event()  # a held lookup is in progress

    def describe_topics(self, *args, **kwargs):
        self.threads.append(threading.get_ident())
        if self.hold.is_set():
            self.waiting.set()
            self.release.wait()
        return self.real.describe_topics(*args, **kwargs)


def stored_rows() -> float:
    return ROWS.labels(table="pageviews")._value.get()


def test_inserts_go_on_while_a_topic_id_lookup_hangs_with_a_node_dead(cluster: KafkaCluster, cluster_env):
    s = cluster_env.settings
    client = connect(s)
    migrate(client, s)
    sink = Sink(s, client)
    lookups = HeldLookups(sink.ids.lookup.admin)
    sink.ids.lookup.admin = lookups
    loop = threading.Thread(target=sink.run, name="sink-loop", daemon=True)
    loop.start()
    records = Records(s, partitions=s.topic_partitions)
    days = recent_days(1)
    try:
        records.pageviews(50, days)
        records.flush()
        wait_for(lambda: stored_rows() >= 50, 120, "the first round stored")

        cluster.kill(2)  # a node gone, as in the stack test that found the stall
        base = stored_rows()
        records.pageviews(50, days)
        records.flush()
        wait_for(lambda: stored_rows() >= base + 50, 120, "a round stored with node 2 dead")

        # From now on, every lookup hangs until released: the loop must keep inserting.
        lookups.hold.set()
        sink.ids.lookup.poke()
        wait_for(lookups.waiting.is_set, 30, "a lookup in progress")
        flushes, base = sink.flushes, stored_rows()
        records.pageviews(50, days)
        records.flush()
        # The loop counts a flush after its commit, so the rows are queryable a moment before
        # the count moves: wait for both rather than read the count once the rows are there.
        wait_for(lambda: stored_rows() >= base + 50 and sink.flushes > flushes, 120,
                 "a round stored and its flush finished while the lookup hangs")
        assert not lookups.release.is_set() and loop.is_alive()
        assert lookups.threads and loop.ident not in lookups.threads  # never on the insert loop
    finally:
        lookups.release.set()
        sink.stopping.set()
        loop.join(60)
        if not cluster.alive(2):
            cluster.start(2)
    got = client.query("SELECT count(), uniqExact(event_id) FROM pageviews").result_rows[0]
    assert list(got) == [150, 150]
    assert not loop.is_alive()
