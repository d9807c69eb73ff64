"""Chaos on a real three-node Kafka cluster (KRaft; replication factor 3, min.insync.replicas 2),
with the whole pipeline (collector, worker, sink) running against it through a comma-separated
bootstrap list and a load of beacons arriving while brokers die.

The checks are the issue's: every beacon answered 2xx is stored exactly once (rows FINAL equal
the acknowledged beacons, and `count()` equals `uniqExact(event_id)`, so not even an unmerged
duplicate is left), and the aggregates agree with the raw rows (`tally reconcile`).
"""

from __future__ import annotations

import time

import pytest

from tests.chaos import assert_stored_exactly_once, readyz, report
from tests.cluster import KafkaCluster
from tests.conftest import Env, start_pipeline, wait_for
from tests.helpers import BeaconLoad

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]


def online_after(s, load: BeaconLoad, t0: float, timeout: float, what: str) -> float:
    """Stop the load, wait for the collector to forward directly again: seconds since t0."""
    load.stop()
    wait_for(lambda: readyz(s)["mode"] == "online", timeout, what)
    return time.monotonic() - t0


def assert_settled(cluster: KafkaCluster, env: Env, load: BeaconLoad, prefix: str, procs) -> dict[str, int]:
    """Every beacon sent was acknowledged and is stored exactly once; the replicas are in sync again."""
    assert not load.failed, dict(list(load.failed.items())[:5])
    counts = assert_stored_exactly_once(env, load, prefix, procs)
    cluster.wait_in_sync([env.settings.topic("beacons.raw"), env.settings.topic("pageviews.enriched")])
    return counts


def pipeline_topics(settings) -> list[str]:
    from tally.streams.state import faust_topics, state_topics

    from tally.topics import specs

    return ([settings.topic(t.name) for t in specs(settings)] + list(state_topics(settings).values())
            + list(faust_topics(settings)))


def test_every_topic_gets_the_replication_settings_and_a_change_reaches_existing_ones(cluster, cluster_env):
    from tally.streams.state import ensure_state_topics

    from tally.topics import ensure, ensure_topics, specs

    s = cluster_env.settings  # TALLY_TOPIC_REPLICATION_FACTOR=3, TALLY_TOPIC_MIN_INSYNC_REPLICAS=2
    assert s.bootstrap.count(",") == 2
    created = ensure_state_topics(s).created
    names = pipeline_topics(s)
    assert len(created) == 3 and set(created) < set(names)  # two changelogs, Faust's leader topic
    assert cluster.replication(names) == dict.fromkeys(names, (3, 2, True))

    # Changed settings reach the existing topics the next time a component starts.
    cluster_env.vars["TALLY_TOPIC_MIN_INSYNC_REPLICAS"] = "1"
    lowered = cluster_env.settings
    changes = ensure_topics(lowered)
    assert not changes.created and not changes.warnings
    assert sorted(line.split(":")[0] for line in changes.altered) == sorted(
        lowered.topic(t.name) for t in specs(lowered))  # every pipeline topic, the keys topics too
    assert all(line.endswith("min.insync.replicas 2 -> 1") for line in changes.altered)
    assert len(ensure_state_topics(lowered).altered) == 3
    # Each node applies a config change from the quorum's log: moments apart.
    wait_for(lambda: cluster.replication(names) == dict.fromkeys(names, (3, 1, True)), 30,
             "min.insync.replicas 1 on every node")
    assert ensure_topics(lowered).altered == []  # nothing left to change

    # A replication factor cannot change through a config: the start says so, naming the topic.
    odd = lowered.topic("made-with-two-replicas")
    cluster_env.vars.update({"TALLY_TOPIC_REPLICATION_FACTOR": "2", "TALLY_TOPIC_MIN_INSYNC_REPLICAS": "2"})
    assert ensure(cluster_env.settings, {odd: (1, {})}).created == [odd]
    assert cluster.replication([odd]) == {odd: (2, 2, True)}  # (and the metadata shows it now)
    cluster_env.vars.update({"TALLY_TOPIC_REPLICATION_FACTOR": "3", "TALLY_TOPIC_MIN_INSYNC_REPLICAS": "3"})
    changes = ensure(cluster_env.settings, {odd: (1, {})})
    assert len(changes.warnings) == 2 and not changes.altered
    assert f"topic {odd} has replication factor 2, the settings ask for 3" in changes.warnings[0]
    assert "kafka-reassign-partitions" in changes.warnings[0]
    # ...and never sets a min.insync.replicas that would refuse every write to it.
    assert "min.insync.replicas 3" in changes.warnings[1] and "would refuse every acks=all write" in changes.warnings[1]
    assert cluster.replication([odd]) == {odd: (2, 2, True)}


@pytest.mark.chaos
def test_leader_sigkilled_under_load_loses_and_duplicates_nothing(cluster: KafkaCluster, cluster_env, spawn):
    env = cluster_env
    env.vars["TALLY_RATE_LIMIT_PER_SECOND"] = "0"
    s = env.settings
    procs = start_pipeline(env, spawn)
    raw = s.topic("beacons.raw")
    victim = cluster.leader(raw, 0)

    load = BeaconLoad(s, "/leader/", threads=16, rate=200).start()
    load.wait_sent(1000)
    t0 = time.monotonic()
    cluster.kill(victim)
    successor = cluster.wait_leader_elsewhere(raw, 0, victim)
    failover = time.monotonic() - t0
    load.wait_sent(load.sent + 1000)  # and on, with the new leader
    online = online_after(s, load, t0, 120, "the collector online again")
    print(f"leader {victim} of {raw}[0] SIGKILLed: node {successor} leads after {failover:.1f}s, "
          f"the collector is online again after {online:.1f}s; {len(load.acked)} beacons acknowledged, "
          f"{len(load.failed)} not")
    cluster.start(victim)
    counts = assert_settled(cluster, env, load, "/leader/", procs)
    report("leader SIGKILLed", None, load_per_s=200, failover_s=round(failover, 1), online_after_s=round(online, 1),
           **counts)


@pytest.mark.chaos
def test_two_of_three_brokers_sigkilled_the_collector_spools_then_replays(cluster: KafkaCluster, cluster_env,
                                                                          spawn):
    env = cluster_env
    env.vars.update({"TALLY_RATE_LIMIT_PER_SECOND": "0", "TALLY_SPOOL_AFTER_MS": "300"})
    s = env.settings
    procs = start_pipeline(env, spawn)

    load = BeaconLoad(s, "/quorum/", threads=16, rate=200).start()
    load.wait_sent(500)
    survivor, *victims = sorted(cluster.running())
    cluster.kill(*victims)
    # acks=all with min.insync.replicas 2 cannot be met by one node: every beacon from now
    # on is acknowledged from the spool.
    wait_for(lambda: readyz(s)["mode"] == "spooling", 60, "the collector spooling")
    spooling_at = load.sent
    load.wait_sent(spooling_at + 1000, timeout=300)
    spooled = readyz(s)["spool_batches"]
    assert spooled > 0

    # The nodes come back while beacons keep arriving: the collector replays its spool (new
    # beacons queue behind it, in order) and then forwards directly again. (The load stops
    # soon after: a spool drains only faster than it fills.)
    t0 = time.monotonic()
    cluster.start(*victims)
    restarted = time.monotonic() - t0
    load.wait_sent(load.sent + 200)
    recovered = online_after(s, load, t0, 240, "the collector online again (spool replayed)")
    print(f"nodes {victims} SIGKILLed, node {survivor} left: {spooled} batches in the spool 1000 "
          f"beacons later; the nodes were live again after {restarted:.1f}s and the collector online "
          f"after {recovered:.1f}s; {len(load.acked)} beacons acknowledged, {len(load.failed)} not")
    counts = assert_settled(cluster, env, load, "/quorum/", procs)
    report("2 of 3 brokers SIGKILLed", None, load_per_s=200, spooled_batches=spooled,
           online_after_restart_s=round(recovered, 1), **counts)
