"""The topics of the pipeline, each with its partitions, retention and cleanup policy.

Topics are provisioned explicitly (`tally topics create`, run by `tally up`);
brokers started by Tally have auto-creation switched off so a typo cannot
silently create a new topic. Every topic Tally creates gets the replication
settings, and existing ones are brought to them at start (`ensure`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from tally.config import Settings

log = logging.getLogger(__name__)

DAY_MS = 24 * 3600 * 1000

# The pipeline's topics, by their names without TALLY_TOPIC_PREFIX (settings.topic(name)
# adds it). Every component names a topic through these.
BEACONS_RAW = "beacons.raw"
PAGEVIEWS_ENRICHED = "pageviews.enriched"
PRODUCT_EVENTS = "product.events"
AGGREGATES = "aggregates"
DROPS = "drops"
BAD_ROWS = "bad-rows"
SALTS = "salts"
EDGE_KEYS = "edge-keys"
SESSIONS = "sessions"

HOUR_MS = 3600 * 1000
FILE_DELETE_DELAY_MS = 60_000  # Kafka's default: time for reads of a replaced segment to finish


def keys_config(settings: Settings) -> dict[str, str]:
    """Keys topics: compaction whose segments roll, compact and drop tombstones within
    TALLY_KEY_SHRED_SECONDS, so an expired key's bytes leave the disk in bounded time;
    LogAppendTime gives keepers the broker's clock (tally/periodkeys.py: no expiry on one
    possibly wrong clock)."""
    shred_ms = settings.key_shred_seconds * 1000
    return {"cleanup.policy": "compact", "delete.retention.ms": str(shred_ms),
            "min.cleanable.dirty.ratio": "0.01", "segment.ms": str(shred_ms),
            "max.compaction.lag.ms": str(shred_ms), "message.timestamp.type": "LogAppendTime",
            "file.delete.delay.ms": str(min(FILE_DELETE_DELAY_MS, shred_ms))}


@dataclass(frozen=True)
class TopicSpec:
    name: str  # without prefix
    doc: str
    partitions: int | None  # None: TALLY_TOPIC_PARTITIONS
    config: dict[str, str]


def specs(settings: Settings) -> list[TopicSpec]:
    bad_rows_ms = str(settings.bad_rows_retention_days * DAY_MS)
    # Topics with personal data roll a segment at least daily, so retention deletes whole
    # segments on time (a segment is deleted only once its newest record is past retention).
    personal = {"cleanup.policy": "delete", "segment.ms": str(DAY_MS)}
    # beacons.raw holds edge pseudonyms: kept no longer than the edge keys that made them.
    raw_ms = str(settings.salt_grace_hours * HOUR_MS)
    return [
        TopicSpec(BEACONS_RAW, "Beacons as accepted by the collector (IP already pseudonymised).",
                  None, {**personal, "retention.ms": raw_ms}),
        TopicSpec(PAGEVIEWS_ENRICHED, "Pageviews after hashing, bot filtering and enrichment; keyed by visitor.",
                  None, {**personal, "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(PRODUCT_EVENTS, "Product usage events published by applications through the SDK.",
                  None, {**personal, "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(AGGREGATES, "Window totals; keyed by (kind, site, window, partition) so compaction keeps the latest.",
                  None, {"cleanup.policy": "compact,delete", "retention.ms": str(60 * DAY_MS)}),
        TopicSpec(SESSIONS, "Session (visit) states, many per record; keyed by (partition, version, record number).",
                  None, {"cleanup.policy": "compact,delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(DROPS, "Counts of dropped events per site, day and reason.",
                  None, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(BAD_ROWS, "Rejected records with the reason and the original bytes.",
                  None, {**personal, "retention.ms": bad_rows_ms}),
        # Salts and edge keys are secrets with a short life: compaction plus a short
        # delete.retention.ms makes tombstoned keys disappear from the log.
        TopicSpec(SALTS, "Visitor-hash salts, one per period; tombstoned after the grace window.", 1,
                  keys_config(settings)),
        TopicSpec(EDGE_KEYS, "Collectors' IP-pseudonym keys, one per period; tombstoned after the grace window.",
                  1, keys_config(settings)),
    ]


def state_topic(settings: Settings, kind: str) -> str:
    """The changelog of a stream worker's window state of one kind (web or product). Internal
    to the worker, which creates it (streams/state.py); one per TALLY_APP_ID."""
    return settings.topic(f"{settings.app_id}-{kind}-state")


def sink_group(settings: Settings) -> str:
    """The sink's consumer group (the stream workers' group is TALLY_APP_ID itself)."""
    return f"{settings.app_id}-sink"


def admin(settings: Settings) -> AdminClient:
    # log_level 3: errors only; librdkafka's info lines are noise in status polling.
    return AdminClient({"bootstrap.servers": settings.bootstrap, "socket.timeout.ms": 10000,
                        "log_level": 3})


@dataclass
class TopicChanges:
    """What ensure() did: topics created, settings changed, and what it could not fix."""

    created: list[str] = field(default_factory=list)
    altered: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def ensure_topics(settings: Settings, timeout: float = 30.0) -> TopicChanges:
    """Create the pipeline's missing topics and bring existing ones to the replication settings."""
    return ensure(settings, {settings.topic(s.name): (s.partitions or settings.topic_partitions, s.config)
                             for s in specs(settings)}, timeout)


def ensure(settings: Settings, wanted: dict[str, tuple[int, dict[str, str]]],
           timeout: float = 30.0) -> TopicChanges:
    """Create the missing topics of `wanted` (name -> partitions, config) with the replication
    settings (TALLY_TOPIC_REPLICATION_FACTOR, TALLY_TOPIC_MIN_INSYNC_REPLICAS), then reconcile
    every one of them: a different min.insync.replicas is altered in place; a different
    replication factor cannot be, and is reported. The configs of `wanted` are set on
    existing topics too (a changed retention reaches old topics); others are left alone."""
    client = admin(settings)  # keep a reference: futures of a collected client never resolve
    replicas, min_isr = settings.replication_factor, settings.min_insync_replicas
    extra = {"min.insync.replicas": str(min_isr)} if min_isr is not None else {}
    existing = set(client.list_topics(timeout=timeout).topics)
    new = [NewTopic(name, num_partitions=parts, replication_factor=replicas or -1, config={**config, **extra})
           for name, (parts, config) in wanted.items() if name not in existing]
    changes = TopicChanges(created=_create(client, new, timeout))
    existing |= {t.topic for t in new} - set(changes.created)  # created meanwhile by someone else
    if replicas is not None or min_isr is not None:
        _reconcile(client, sorted(wanted), existing, replicas, min_isr, changes, timeout)
    _reconcile_configs(client, {n: config for n, (_, config) in wanted.items() if n in existing}, changes, timeout)
    for line in changes.altered:
        log.info("topic %s", line)
    for line in changes.warnings:
        log.warning("%s", line)
    return changes


# Errors after which the same request can simply be sent again: the broker handle was
# replaced while librdkafka learned the cluster, a connection dropped, a node was busy.
TRANSIENT = frozenset({KafkaError._DESTROY_BROKER, KafkaError._TRANSPORT, KafkaError._TIMED_OUT,
                       KafkaError.REQUEST_TIMED_OUT, KafkaError.NOT_CONTROLLER})


def transient(err: KafkaError) -> bool:
    return err.retriable() or err.code() in TRANSIENT


def _create(client: AdminClient, new: list[NewTopic], timeout: float) -> list[str]:
    """Create topics; the names created. A topic that exists meanwhile (a concurrent creator,
    or our own attempt that failed on the way back) is fine; a transient error is retried."""
    created: list[str] = []
    deadline = time.monotonic() + timeout
    while new:
        by_name, new = {t.topic: t for t in new}, []
        for name, fut in client.create_topics(list(by_name.values()), operation_timeout=timeout).items():
            try:
                fut.result()
                created.append(name)
            except KafkaException as exc:
                err = exc.args[0]
                if err.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                    continue
                if not transient(err) or time.monotonic() > deadline:
                    raise
                log.info("creating topic %s: %s; trying again", name, err.str())
                new.append(by_name[name])
        if new:
            time.sleep(0.5)
    return created


def _metadata(client: AdminClient, names: list[str], timeout: float) -> dict[str, Any]:
    """The cluster's topics, asked again until each of `names` is known: a broker learns a
    topic created through another node from the quorum's log moments later, and a topic it
    does not know yet would otherwise be skipped without a word."""
    deadline = time.monotonic() + timeout
    while True:
        topics = client.list_topics(timeout=timeout).topics
        if all(n in topics and topics[n].partitions for n in names) or time.monotonic() > deadline:
            return topics
        time.sleep(0.2)


def _reconcile(client: AdminClient, names: list[str], existed: set[str], replicas: int | None,
               min_isr: int | None, changes: TopicChanges, timeout: float) -> None:
    topics = _metadata(client, names, timeout)
    for name in names:
        if name not in topics or not topics[name].partitions:
            changes.warnings.append(f"topic {name} is not in the cluster's metadata after {timeout:.0f}s: "
                                    "its replication settings were not checked")
    actual = {n: min(len(p.replicas) for p in topics[n].partitions.values())
              for n in names if n in topics and topics[n].partitions}
    for name, have in actual.items():
        if replicas is not None and have != replicas:
            changes.warnings.append(
                f"topic {name} has replication factor {have}, the settings ask for {replicas} "
                f"(TALLY_TOPIC_REPLICATION_FACTOR, or the local cluster's size): Kafka cannot change "
                f"it through a config. Reassign its partitions (kafka-reassign-partitions.sh), "
                f"or delete the topic, losing its records, and run `tally topics create`.")
        if min_isr is not None and min_isr > have:
            changes.warnings.append(
                f"topic {name} has {have} replicas: min.insync.replicas {min_isr} "
                f"(TALLY_TOPIC_MIN_INSYNC_REPLICAS) would refuse every acks=all write to it")
    # Topics just created have the setting already (and a broker may not know them yet).
    older = [n for n in actual if n in existed and min_isr is not None and min_isr <= actual[n]]
    if not older:
        return
    to_alter = []
    for name, configs in topic_configs(client, older, timeout).items():
        current = configs["min.insync.replicas"].value
        if current != str(min_isr):
            to_alter.append(ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
                ConfigEntry("min.insync.replicas", str(min_isr), incremental_operation=AlterConfigOpType.SET)]))
            changes.altered.append(f"{name}: min.insync.replicas {current} -> {min_isr}")
    for fut in (client.incremental_alter_configs(to_alter, request_timeout=timeout).values() if to_alter else []):
        fut.result(timeout=timeout)


def _reconcile_configs(client: AdminClient, wanted: dict[str, dict[str, str]], changes: TopicChanges,
                       timeout: float) -> None:
    """Set each existing topic's configs of `wanted` that differ from what the broker has."""
    if not wanted:
        return
    to_alter = []
    for name, configs in topic_configs(client, sorted(wanted), timeout).items():
        diff = {k: v for k, v in wanted[name].items() if k not in configs or configs[k].value != v}
        if diff:
            to_alter.append(ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in sorted(diff.items())]))
            changes.altered.append(f"{name}: " + ", ".join(f"{k} {configs[k].value if k in configs else '-'} -> {v}"
                                                         for k, v in sorted(diff.items())))
    for fut in (client.incremental_alter_configs(to_alter, request_timeout=timeout).values() if to_alter else []):
        fut.result(timeout=timeout)


def topic_configs(client: AdminClient, names: list[str], timeout: float = 30.0) -> dict[str, dict[str, ConfigEntry]]:
    """The configs of existing topics. A topic created moments ago (by this or another
    process) can be unknown to the broker asked for a while: asked again, until timeout."""
    out: dict[str, dict[str, ConfigEntry]] = {}
    deadline = time.monotonic() + timeout
    while True:
        resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names if n not in out]
        if not resources:
            return out
        for res, fut in client.describe_configs(resources, request_timeout=timeout).items():
            try:
                out[res.name] = fut.result(timeout=timeout)
            except KafkaException as exc:
                err = exc.args[0]
                retry = err.code() == KafkaError.UNKNOWN_TOPIC_OR_PART or transient(err)
                if not retry or time.monotonic() > deadline:
                    raise
        time.sleep(0.2)


def effective_replication_factor(settings: Settings, timeout: float = 30.0) -> int:
    """The replication factor topics get: the setting, else the cluster's default."""
    if settings.replication_factor is not None:
        return settings.replication_factor
    client = admin(settings)
    broker = next(iter(client.list_topics(timeout=timeout).brokers))
    res = ConfigResource(ConfigResource.Type.BROKER, str(broker))
    configs = client.describe_configs([res], request_timeout=timeout)[res].result(timeout=timeout)
    default = configs.get("default.replication.factor")
    return int(default.value) if default is not None else 1  # a broker that does not say: one copy


def describe_config(settings: Settings, name: str) -> dict[str, str]:
    res = ConfigResource(ConfigResource.Type.TOPIC, settings.topic(name))
    client = admin(settings)  # keep a reference: futures of a collected client never resolve
    fut = client.describe_configs([res])[res]
    return {k: v.value for k, v in fut.result(timeout=10).items()}
