"""Consumer-group health for `tally status`: lag per topic (total and worst
partition) and which member holds which partitions, so an operator can see
when to add stream workers."""

from __future__ import annotations

import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field

from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
from confluent_kafka.admin import AdminClient, OffsetSpec

from tally.config import Settings
from tally.topics import admin, sink_group


@dataclass
class TopicLag:
    topic: str
    total: int = 0
    worst_partition: int = -1
    worst_lag: int = 0


@dataclass
class GroupReport:
    group: str
    state: str
    members: list[dict] = field(default_factory=list)
    lag: list[TopicLag] = field(default_factory=list)


def groups(settings: Settings) -> list[str]:
    """The consumer groups of this stack: the stream app and the sink."""
    return [settings.app_id, sink_group(settings)]


def group_report(client: AdminClient, group: str, timeout: float = 5.0) -> GroupReport:
    desc = client.describe_consumer_groups([group], request_timeout=timeout)[group].result(timeout)
    report = GroupReport(group, desc.state.name.lower())
    for m in desc.members:
        parts: dict[str, list[int]] = {}
        for tp in m.assignment.topic_partitions if m.assignment else []:
            parts.setdefault(tp.topic, []).append(tp.partition)
        report.members.append({"member_id": m.member_id, "client_id": m.client_id, "host": m.host,
                               "partitions": {t: sorted(p) for t, p in sorted(parts.items())}})
    committed = client.list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group)], request_timeout=timeout)[group].result(timeout)
    offsets = {(tp.topic, tp.partition): tp.offset for tp in committed.topic_partitions}
    for m in report.members:  # assigned but never committed: everything is still to do
        for topic, parts in m["partitions"].items():
            for p in parts:
                offsets.setdefault((topic, p), -1)
    tps = [TopicPartition(t, p, o) for (t, p), o in sorted(offsets.items()) if not t.startswith("__")]
    if not tps:
        return report
    ends = client.list_offsets({TopicPartition(tp.topic, tp.partition): OffsetSpec.latest() for tp in tps},
                               request_timeout=timeout)
    by_topic: dict[str, TopicLag] = {}
    for tp in tps:
        end = ends[TopicPartition(tp.topic, tp.partition)].result(timeout).offset
        # No commit yet (offset < 0): the whole partition is lag.
        lag = max(0, end - max(tp.offset, 0))
        t = by_topic.setdefault(tp.topic, TopicLag(tp.topic))
        t.total += lag
        if lag > t.worst_lag or t.worst_partition < 0:
            t.worst_lag, t.worst_partition = lag, tp.partition
    report.lag = [by_topic[t] for t in sorted(by_topic)]
    return report


def stack_groups(settings: Settings, timeout: float = 30.0) -> list[GroupReport]:
    """The groups' reports, asked in a child process: librdkafka's group admin calls can
    abort the whole process when a broker dies mid-request (librdkafka#4605), and `tally
    status` must still answer then, saying the groups are unknown."""
    ctx = multiprocessing.get_context("spawn")  # no inherited librdkafka threads
    with ProcessPoolExecutor(1, mp_context=ctx) as pool:
        try:
            return pool.submit(_stack_groups, settings).result(timeout)
        except BrokenProcessPool:
            why = "aborted"
        except TimeoutError:
            why = "timed out"
    return [GroupReport(group, f"unknown (the Kafka admin client {why})") for group in groups(settings)]


def _stack_groups(settings: Settings) -> list[GroupReport]:
    client = admin(settings)  # keep a reference: futures of a collected client never resolve
    out = []
    for group in groups(settings):
        try:
            out.append(group_report(client, group))
        except Exception as exc:  # a broker that is down or a group that never ran
            out.append(GroupReport(group, f"unknown ({type(exc).__name__})"))
    return out
