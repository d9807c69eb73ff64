-- Raw pageviews, one row per accepted, non-bot event. Deduplicated by event_id:
-- the sorting key ends with it, so ReplacingMergeTree folds replays together.
CREATE TABLE IF NOT EXISTS pageviews
(
    event_id        UUID,
    received_at     DateTime64(3, 'UTC'),
    site            LowCardinality(String),
    hostname        LowCardinality(String),
    path            String,
    event           LowCardinality(String),
    visitor_id      Int64,
    referrer_host   String,
    referrer_source LowCardinality(String),
    utm_source      Nullable(String),
    utm_medium      Nullable(String),
    utm_campaign    Nullable(String),
    browser         LowCardinality(String),
    os              LowCardinality(String),
    device          LowCardinality(String),
    user_agent      Nullable(String),
    props           Map(String, String)
)
ENGINE = ReplacingMergeTree
PARTITION BY toYYYYMM(received_at)
ORDER BY (site, toDate(received_at), event_id)
TTL toDateTime(received_at) + INTERVAL {raw_retention_days} DAY
