"""The topics of the pipeline, each with its partitions, retention and cleanup policy.

Topics are provisioned explicitly (`tally topics create`, run by `tally up`);
brokers started by Tally have auto-creation switched off so a typo cannot
silently create a new topic.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from confluent_kafka import KafkaError, KafkaException
from confluent_kafka.admin import (
    AdminClient,
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewTopic,
)

from tally.config import Settings

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

HOUR_MS = 3600 * 1000
# Keys topics: compaction with a short tombstone life; LogAppendTime gives keepers the
# broker's clock (tally/periodkeys.py: no expiry on one possibly wrong clock).
KEYS_CONFIG = {"cleanup.policy": "compact", "delete.retention.ms": str(HOUR_MS),
               "min.cleanable.dirty.ratio": "0.01", "segment.ms": str(HOUR_MS),
               "max.compaction.lag.ms": str(HOUR_MS), "message.timestamp.type": "LogAppendTime"}


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
        TopicSpec(DROPS, "Counts of dropped events per site, day and reason.",
                  None, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(BAD_ROWS, "Rejected records with the reason and the original bytes.",
                  None, {**personal, "retention.ms": bad_rows_ms}),
        # Salts and edge keys are secrets with a short life: compaction plus a short
        # delete.retention.ms makes tombstoned keys disappear from the log.
        TopicSpec(SALTS, "Visitor-hash salts, one per period; tombstoned after the grace window.", 1, KEYS_CONFIG),
        TopicSpec(EDGE_KEYS, "Collectors' IP-pseudonym keys, one per period; tombstoned after the grace window.",
                  1, KEYS_CONFIG),
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


def ensure_topics(settings: Settings, timeout: float = 30.0) -> list[str]:
    """Create missing topics and reconcile the configs of existing ones; return the names created."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    new = []
    for spec in specs(settings):
        name = settings.topic(spec.name)
        if name in existing:
            continue
        partitions = spec.partitions or settings.topic_partitions
        new.append(NewTopic(name, num_partitions=partitions, replication_factor=-1, config=spec.config))
    created = []
    for name, fut in (client.create_topics(new, operation_timeout=timeout).items() if new else ()):
        try:
            fut.result()
            created.append(name)
        except Exception as exc:  # it existed already (a concurrent creator, or metadata lag): fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    reconcile_configs(settings, client, [settings.topic(sp.name) for sp in specs(settings)
                                         if settings.topic(sp.name) not in created], timeout)
    return created


def reconcile_configs(settings: Settings, client: AdminClient, names: list[str], timeout: float) -> list[str]:
    """Set each existing topic's spec configs that differ (a changed retention reaches old
    topics too); return the names altered. Configs outside the spec are left alone."""
    wanted = {settings.topic(sp.name): sp.config for sp in specs(settings)}
    resources = [ConfigResource(ConfigResource.Type.TOPIC, n) for n in names]
    if not resources:
        return []
    current = _describe(client, resources, timeout)
    changes = []
    for name, config in current.items():
        diff = {k: v for k, v in wanted[name].items() if config.get(k) != v}
        if diff:
            changes.append(ConfigResource(ConfigResource.Type.TOPIC, name, incremental_configs=[
                ConfigEntry(k, v, incremental_operation=AlterConfigOpType.SET) for k, v in diff.items()]))
    for fut in client.incremental_alter_configs(changes).values() if changes else ():
        fut.result(timeout=timeout)
    return [c.name for c in changes]


def _describe(client: AdminClient, resources: list[ConfigResource], timeout: float) -> dict[str, dict[str, str]]:
    """Configs of the topics; a topic just created may be unknown to the broker for a moment
    (KRaft: its metadata follows the controller's), so that error is waited out."""
    deadline = time.monotonic() + timeout
    out: dict[str, dict[str, str]] = {}
    pending = resources
    while pending:
        missing = []
        for r, fut in client.describe_configs(pending).items():
            try:
                out[r.name] = {k: v.value for k, v in fut.result(timeout=timeout).items()}
            except KafkaException as exc:
                if exc.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                    raise
                missing.append(ConfigResource(ConfigResource.Type.TOPIC, r.name))
        pending = missing
        if pending:
            time.sleep(0.2)
    return out


def describe_config(settings: Settings, name: str) -> dict[str, str]:
    res = ConfigResource(ConfigResource.Type.TOPIC, settings.topic(name))
    client = admin(settings)  # keep a reference: futures of a collected client never resolve
    fut = client.describe_configs([res])[res]
    return {k: v.value for k, v in fut.result(timeout=10).items()}
