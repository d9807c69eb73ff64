-- utm_content and utm_term of the page URL (pageview_batch v3), like utm_campaign: NULL on
-- pageviews without them and on older rows; a session keeps its entry pageview's ('' when none).
ALTER TABLE pageviews ADD COLUMN IF NOT EXISTS utm_content Nullable(String) AFTER utm_campaign,
                      ADD COLUMN IF NOT EXISTS utm_term Nullable(String) AFTER utm_content;

ALTER TABLE sessions ADD COLUMN IF NOT EXISTS utm_content String DEFAULT '' AFTER utm_campaign,
                     ADD COLUMN IF NOT EXISTS utm_term String DEFAULT '' AFTER utm_content
