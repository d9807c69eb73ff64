"""The topics of the pipeline, each with its partitions, retention and cleanup policy.

Topics are provisioned explicitly (`tally topics create`, run by `tally up`);
brokers started by Tally have auto-creation switched off so a typo cannot
silently create a new topic.
"""

from __future__ import annotations

from dataclasses import dataclass

from confluent_kafka.admin import AdminClient, ConfigResource, NewTopic

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
SESSIONS = "sessions"


@dataclass(frozen=True)
class TopicSpec:
    name: str  # without prefix
    doc: str
    partitions: int | None  # None: TALLY_TOPIC_PARTITIONS
    config: dict[str, str]


def specs(settings: Settings) -> list[TopicSpec]:
    bad_rows_ms = str(settings.bad_rows_retention_days * DAY_MS)
    return [
        TopicSpec(BEACONS_RAW, "Beacons as accepted by the collector (IP already pseudonymised).",
                  None, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(PAGEVIEWS_ENRICHED, "Pageviews after hashing, bot filtering and enrichment; keyed by visitor.",
                  None, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(PRODUCT_EVENTS, "Product usage events published by applications through the SDK.",
                  None, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(AGGREGATES, "Window totals; keyed by (kind, site, window, partition) so compaction keeps the latest.",
                  None, {"cleanup.policy": "compact,delete", "retention.ms": str(60 * DAY_MS)}),
        TopicSpec(SESSIONS, "Session (visit) states; keyed by (site, visitor, start) so compaction keeps the latest.",
                  None, {"cleanup.policy": "compact,delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(DROPS, "Counts of dropped events per site, day and reason.",
                  None, {"cleanup.policy": "delete", "retention.ms": str(7 * DAY_MS)}),
        TopicSpec(BAD_ROWS, "Rejected records with the reason and the original bytes.",
                  None, {"cleanup.policy": "delete", "retention.ms": bad_rows_ms}),
        # Salts are secrets with a short life: compaction plus a short
        # delete.retention.ms makes tombstoned salts disappear from the log.
        TopicSpec(SALTS, "Visitor-hash salts, one per period; tombstoned after the grace window.",
                  1, {"cleanup.policy": "compact", "delete.retention.ms": str(3600 * 1000),
                      "min.cleanable.dirty.ratio": "0.01", "segment.ms": str(3600 * 1000),
                      "max.compaction.lag.ms": str(3600 * 1000)}),
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
    """Create missing topics; return the names created. Existing topics are left alone."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=timeout).topics)
    new = []
    for spec in specs(settings):
        name = settings.topic(spec.name)
        if name in existing:
            continue
        partitions = spec.partitions or settings.topic_partitions
        new.append(NewTopic(name, num_partitions=partitions, replication_factor=-1, config=spec.config))
    if not new:
        return []
    created = []
    for name, fut in client.create_topics(new, operation_timeout=timeout).items():
        try:
            fut.result()
            created.append(name)
        except Exception as exc:  # a concurrent creator won the race: fine
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise
    return created


def describe_config(settings: Settings, name: str) -> dict[str, str]:
    res = ConfigResource(ConfigResource.Type.TOPIC, settings.topic(name))
    client = admin(settings)  # keep a reference: futures of a collected client never resolve
    fut = client.describe_configs([res])[res]
    return {k: v.value for k, v in fut.result(timeout=10).items()}
