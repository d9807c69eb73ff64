-- Retention, re-applied by `tally migrate` whenever a TALLY_*_RETENTION_DAYS
-- setting changes (this file is repeatable: it runs again when its rendered
-- text differs from the last applied one). MODIFY TTL also rewrites existing
-- parts, so shortening a retention deletes the expired rows on the next migrate.
ALTER TABLE pageviews MODIFY TTL toDateTime(received_at) + INTERVAL {raw_retention_days} DAY;
ALTER TABLE sessions MODIFY TTL toDateTime(session_start) + INTERVAL {raw_retention_days} DAY;
ALTER TABLE product_events MODIFY TTL toDateTime(occurred_at) + INTERVAL {product_retention_days} DAY;
ALTER TABLE bad_rows MODIFY TTL toDateTime(failed_at) + INTERVAL {bad_rows_retention_days} DAY
