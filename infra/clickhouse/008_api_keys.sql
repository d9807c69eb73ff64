-- Stats API keys (docs/api.md). Only a SHA-256 hash of each key is stored; key_id is the
-- public part shown by `tally api-key list`. A key reads the sites in `sites` and the product
-- adoption of the tenants in `tenants` (`*`: every tenant). Revoking inserts the same key again with
-- revoked_at set and a higher version (read with FINAL). Analysts' SQL cannot read this
-- table: the guard refuses it, and the server-mode analyst user has no grant on it.
CREATE TABLE IF NOT EXISTS api_keys
(
    key_id     String,
    key_hash   String,
    name       String,
    sites      Array(String),
    tenants    Array(String),
    created_at DateTime64(3, 'UTC'),
    revoked_at Nullable(DateTime64(3, 'UTC')),
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY key_id
