-- Goals per site (docs/api.md): a custom event name (kind 'event') or a page-path pattern
-- (kind 'page', `*` one path segment, `**` anything), shown under `name`. Managed with
-- `tally goals add|list|remove`; removing inserts the same goal again with deleted_at set
-- and a higher version (read with FINAL). Not secret: analysts may read it, and the Stats
-- API reads it to answer `event:goal` and `conversion_rate`.
CREATE TABLE IF NOT EXISTS goals
(
    goal_id    String,
    site       String,
    name       String,
    kind       LowCardinality(String),
    value      String,
    created_at DateTime64(3, 'UTC'),
    deleted_at Nullable(DateTime64(3, 'UTC')),
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY goal_id
