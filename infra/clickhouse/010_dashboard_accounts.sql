-- Web dashboard accounts and shared links (docs/dashboard.md). Like api_keys: only hashes are
-- stored (argon2 for passwords, SHA-256 for share tokens), a change or revocation is a newer row
-- (read with FINAL), and analysts' SQL cannot read these tables.
CREATE TABLE IF NOT EXISTS dashboard_users
(
    email         String,
    password_hash String,
    role          LowCardinality(String),
    sites         Array(String),
    created_at    DateTime64(3, 'UTC'),
    deleted_at    Nullable(DateTime64(3, 'UTC')),
    version       UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY email;

CREATE TABLE IF NOT EXISTS share_links
(
    link_id    String,
    token_hash String,
    site       String,
    name       String,
    created_at DateTime64(3, 'UTC'),
    revoked_at Nullable(DateTime64(3, 'UTC')),
    version    UInt64
)
ENGINE = ReplacingMergeTree(version)
ORDER BY link_id
