-- Records some stage could not accept, with the reason and the original bytes.
CREATE TABLE IF NOT EXISTS bad_rows
(
    failed_at        DateTime64(3, 'UTC'),
    component        LowCardinality(String),
    reason           LowCardinality(String),
    detail           String,
    source_topic     LowCardinality(String),
    source_partition Int32,
    source_offset    Int64,
    original         String
)
ENGINE = MergeTree
PARTITION BY toYYYYMMDD(failed_at)
ORDER BY (component, reason, failed_at)
TTL toDateTime(failed_at) + INTERVAL {bad_rows_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000
