-- Idempotent inserts: the sink gives every insert an insert_deduplication_token
-- derived from the Kafka offset ranges it covers. A non-replicated MergeTree
-- only remembers tokens with a deduplication window; keep the last 10,000
-- inserts, far more than a sink can replay after a crash.
ALTER TABLE pageviews MODIFY SETTING non_replicated_deduplication_window = 10000
