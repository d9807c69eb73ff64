-- Daily breakdown rollups (sinks/rollups.py): per site, day and Stats API dimension
-- value, the pageviews, exact visitors and events of that day's raw rows (`pageviews`
-- FINAL), computed by the engine for days that are over. A recomputation writes a
-- new `version` of the whole day; `daily_stats_log` names the version in force for
-- each site and day, and readers take only that one (the `breakdowns_daily` view),
-- so a day switches from one computation to the next at once. Superseded versions
-- are deleted a check later. No TTL: like `aggregates`, rollups outlive the raw rows.
CREATE TABLE IF NOT EXISTS daily_stats
(
    site      LowCardinality(String),
    day       Date,
    dimension LowCardinality(String),
    value     String,
    pageviews UInt64,
    visitors  UInt64,
    events    UInt64,
    version   UInt64
)
ENGINE = MergeTree
PARTITION BY toYYYYMM(day)
ORDER BY (site, dimension, day, value);

-- One row per site and day that has a rollup: its version, the fingerprint of the raw
-- rows it was computed from (row count and the sum of each row's millisecond of the
-- day, both over the unmerged rows), the vocabulary it was computed with (`rules`), and
-- whether the day is closed (no event for it can reach the warehouse any more). A newer
-- row (higher `updated`) replaces an older one: read with FINAL.
CREATE TABLE IF NOT EXISTS daily_stats_log
(
    site        LowCardinality(String),
    day         Date,
    version     UInt64,
    raw_rows    UInt64,
    raw_stamp   UInt64,
    rules       String,
    closed      UInt8,
    computed_at DateTime64(3, 'UTC'),
    updated     UInt64
)
ENGINE = ReplacingMergeTree(updated)
ORDER BY (site, day)
