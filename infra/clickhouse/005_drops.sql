-- Dropped-event counters, emitted as deltas by the collector and the worker.
-- SummingMergeTree adds rows with the same key together; always read with
-- sum(count) ... GROUP BY (or the drops_daily view). The sink's deduplication
-- token keeps a replayed insert from being counted twice.
CREATE TABLE IF NOT EXISTS drops
(
    site      LowCardinality(String),
    day       Date,
    reason    LowCardinality(String),
    component LowCardinality(String),
    count     UInt64
)
ENGINE = SummingMergeTree(count)
PARTITION BY toYYYYMM(day)
ORDER BY (site, day, reason, component)
SETTINGS non_replicated_deduplication_window = 10000
