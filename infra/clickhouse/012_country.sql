-- The client's country (ISO 3166-1 alpha-2), looked up by the collector before it
-- pseudonymises the address (pageview_batch v2); empty for older rows and unknown addresses.
ALTER TABLE pageviews ADD COLUMN IF NOT EXISTS country LowCardinality(String) DEFAULT ''
