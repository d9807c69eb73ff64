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
-- rows it was computed from (row count and the sum of a hash of each row's content,
-- both over the unmerged rows) and the vocabulary it was computed with (`rules`).
-- Readers use a rollup only while the raw rows still have that fingerprint. `sealed`:
-- the builder found the fingerprint still equal on the last days before the raw rows
-- start to expire; only a sealed rollup answers for a day whose raw rows expire. A
-- newer row (higher `updated`) replaces an older one: read with FINAL.
CREATE TABLE IF NOT EXISTS daily_stats_log
(
    site        LowCardinality(String),
    day         Date,
    version     UInt64,
    raw_rows    UInt64,
    raw_stamp   UInt64,
    rules       String,
    sealed      UInt8,
    computed_at DateTime64(3, 'UTC'),
    updated     UInt64
)
ENGINE = ReplacingMergeTree(updated)
ORDER BY (site, day)
;

-- The fingerprint of each site's day of raw rows, kept by the engine as an aggregate
-- projection of `pageviews` (per part, rebuilt when a merge folds duplicates or a
-- mutation deletes rows), so the rollup checks and the Stats API's per-query check of
-- open days read a few rows per part instead of every event's timestamp. The expression
-- must stay the same as STAMP in sinks/rollups.py.
ALTER TABLE pageviews MODIFY SETTING deduplicate_merge_projection_mode = 'rebuild',
                                     lightweight_mutation_projection_mode = 'rebuild';

ALTER TABLE pageviews ADD PROJECTION IF NOT EXISTS day_prints
(
    SELECT site, toDate(received_at), count(),
           sum(sipHash64(tuple(event_id, received_at, hostname, path, event, visitor_id, referrer_host, referrer_source,
                               utm_source, utm_medium, utm_campaign, browser, os, device)))
    GROUP BY site, toDate(received_at)
);

-- Existing parts get it in the background; until a part has it, queries read its rows.
ALTER TABLE pageviews MATERIALIZE PROJECTION day_prints
