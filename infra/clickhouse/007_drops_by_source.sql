-- Drop counts become idempotent. A worker that crashes re-runs stage 1 from its last
-- commit and emits the same counts again for the same input record, which a
-- SummingMergeTree added up twice. Now each row carries the input record it came from
-- (source_partition, source_offset), and ReplacingMergeTree keeps one row per
-- (site, day, reason, component, source): read with FINAL (the drops_daily view does).
-- The collector's counts have no input record: each flushed count carries a random
-- source_offset (source_partition -1), so distinct flushes are never merged.
CREATE TABLE IF NOT EXISTS drops_by_source
(
    site             LowCardinality(String),
    day              Date,
    reason           LowCardinality(String),
    component        LowCardinality(String),
    count            UInt64,
    source_partition Int32,
    source_offset    Int64
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (site, day, reason, component, source_partition, source_offset)
SETTINGS non_replicated_deduplication_window = 10000;

-- Rows counted before this migration keep their sums, one row per key with an id
-- derived from the key: run twice (a crash before its step was recorded), the
-- second copy replaces the first instead of doubling the old counts.
INSERT INTO drops_by_source
SELECT site, day, reason, component, sum(count), -1,
       toInt64(bitShiftRight(cityHash64(site, day, reason, component), 1))
FROM drops
GROUP BY site, day, reason, component;

RENAME TABLE drops TO drops_summed_v1, drops_by_source TO drops;

DROP TABLE IF EXISTS drops_summed_v1
