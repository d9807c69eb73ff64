-- Sessions (visits) from the stream, one row per (site, visitor, session start) in its
-- latest version. A late event can merge two sessions or move a session's start: the
-- stream then emits the old key with deleted = 1, and ReplacingMergeTree(version,
-- deleted) drops it (read with FINAL, or through the visits view). Kept as long as the
-- raw pageviews (TALLY_RAW_RETENTION_DAYS); the session aggregates in `aggregates` stay.
CREATE TABLE IF NOT EXISTS sessions
(
    site            LowCardinality(String),
    visitor_id      Int64,
    session_start   DateTime64(3, 'UTC'),
    session_end     DateTime64(3, 'UTC'),
    partition       UInt16,
    entry_page      String,
    exit_page       String,
    pageviews       UInt32,
    events          UInt32,
    duration_ms     UInt64,
    bounce          UInt8,
    referrer_source LowCardinality(String),
    referrer_host   String,
    utm_source      String,
    utm_medium      String,
    utm_campaign    String,
    device          LowCardinality(String),
    browser         LowCardinality(String),
    os              LowCardinality(String),
    country         LowCardinality(String),
    version         UInt64,
    deleted         UInt8
)
ENGINE = ReplacingMergeTree(version, deleted)
PARTITION BY toYYYYMM(session_start)
ORDER BY (site, toDate(session_start), visitor_id, session_start)
TTL toDateTime(session_start) + INTERVAL {raw_retention_days} DAY
SETTINGS non_replicated_deduplication_window = 10000
