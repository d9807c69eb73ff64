-- Product usage events from the SDK (seed 003). tenant_id and workspace_id are
-- never null. Deduplicated by event_id (last column of the sorting key).
-- Metadata values are stored as strings: booleans as true/false, null as null.
CREATE TABLE IF NOT EXISTS product_events
(
    event_id     UUID,
    event        LowCardinality(String),
    feature_area LowCardinality(String),
    tenant_id    String,
    workspace_id String,
    actor_type   LowCardinality(String),
    actor_id     String,
    subject_type LowCardinality(String),
    subject_id   Nullable(String),
    occurred_at  DateTime64(3, 'UTC'),
    app          LowCardinality(String),
    metadata     Map(String, String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(occurred_at)
ORDER BY (toDate(occurred_at), feature_area, tenant_id, workspace_id, event_id)
TTL toDateTime(occurred_at) + INTERVAL {product_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000
