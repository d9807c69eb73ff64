-- Window totals from the stream, one row per (kind, scope, dimension, window,
-- stream partition). A re-emitted total has a higher version and replaces the
-- older one (ReplacingMergeTree(version); read with FINAL or through the views).
-- No TTL: aggregates outlive the raw rows they were computed from (seed 002).
CREATE TABLE IF NOT EXISTS aggregates
(
    kind         LowCardinality(String),
    scope        String,
    dimension    String,
    window_start DateTime64(3, 'UTC'),
    window_end   DateTime64(3, 'UTC'),
    partition    UInt16,
    count        UInt64,
    uniques      UInt64,
    version      UInt64
)
ENGINE = ReplacingMergeTree(version)
PARTITION BY toYYYYMM(window_start)
ORDER BY (kind, scope, window_start, dimension, partition)
SETTINGS non_replicated_deduplication_window = 10000
