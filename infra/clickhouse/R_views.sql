-- Analysts' views (docs/analysts.md). Repeatable: re-created whenever this file
-- (or the event families it is rendered with) changes.
--
-- Aggregate views read `aggregates` with FINAL (highest version per window and
-- stream partition) and add the partitions up: every visitor and every
-- workspace lives in exactly one stream partition, so the sums are exact.
-- Views over the raw rows (pageviews, product_events) read them with FINAL too:
-- a replayed event not yet merged away by ReplacingMergeTree is counted once.
CREATE OR REPLACE VIEW site_stats_hourly AS
SELECT scope AS site, toDateTime(window_start, 'UTC') AS hour, sum(count) AS pageviews, sum(uniques) AS visitors
FROM aggregates FINAL WHERE kind = 'site_hour'
GROUP BY site, hour;

CREATE OR REPLACE VIEW site_stats_daily AS
SELECT scope AS site, toDate(window_start) AS day, sum(count) AS pageviews, sum(uniques) AS visitors
FROM aggregates FINAL WHERE kind = 'site_day'
GROUP BY site, day;

CREATE OR REPLACE VIEW site_stats_monthly AS
SELECT scope AS site, toStartOfMonth(window_start) AS month, sum(count) AS pageviews, sum(uniques) AS visitors
FROM aggregates FINAL WHERE kind = 'site_month'
GROUP BY site, month;

CREATE OR REPLACE VIEW path_stats_daily AS
SELECT scope AS site, toDate(window_start) AS day, dimension AS path, sum(count) AS pageviews
FROM aggregates FINAL WHERE kind = 'path_day'
GROUP BY site, day, path;

CREATE OR REPLACE VIEW product_family_daily AS
SELECT scope AS tenant, toDate(window_start) AS day, dimension AS family, sum(count) AS events, sum(uniques) AS workspaces
FROM aggregates FINAL WHERE kind = 'product_family_day'
GROUP BY tenant, day, family;

CREATE OR REPLACE VIEW active_workspaces_daily AS
SELECT scope AS tenant, toDate(window_start) AS day, sum(uniques) AS active_workspaces, sum(count) AS events
FROM aggregates FINAL WHERE kind = 'active_workspaces_day'
GROUP BY tenant, day;

CREATE OR REPLACE VIEW drops_daily AS
SELECT site, day, reason, component, sum(count) AS dropped
FROM drops FINAL
GROUP BY site, day, reason, component;

-- Reports over a date range (inclusive), as parameterized views. As in the stream's
-- aggregates, `pageviews` counts events named `pageview` and `visitors` counts
-- visitors with any event (custom events included).
--   SELECT * FROM top_pages(site = 'example.com', date_from = '2026-11-01', date_to = '2026-11-30') LIMIT 10
--
-- top_pages reads the stream's path_day aggregates, so it answers for any window,
-- also after the raw rows expired. The stream counts pageviews per path, not visitors,
-- so this view has no visitors column rather than a column of zeros. top_pages_raw
-- computes pageviews (pageview events only, like path_day) and exact visitors from
-- the raw rows.
CREATE OR REPLACE VIEW top_pages AS
SELECT dimension AS path, sum(count) AS pageviews
FROM aggregates FINAL
WHERE kind = 'path_day' AND scope = {site:String}
  AND window_start >= toDateTime64({date_from:Date}, 3, 'UTC')
  AND window_start < toDateTime64({date_to:Date} + 1, 3, 'UTC')
GROUP BY path
ORDER BY pageviews DESC, path;

CREATE OR REPLACE VIEW top_pages_raw AS
SELECT path, count() AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
  AND event = 'pageview'
GROUP BY path
ORDER BY pageviews DESC, path;

CREATE OR REPLACE VIEW top_sources AS
SELECT referrer_source AS source, referrer_host, ifNull(utm_source, '') AS utm_source,
       ifNull(utm_medium, '') AS utm_medium, ifNull(utm_campaign, '') AS utm_campaign,
       countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
GROUP BY source, referrer_host, utm_source, utm_medium, utm_campaign
ORDER BY pageviews DESC, source, referrer_host;

CREATE OR REPLACE VIEW top_browsers AS
SELECT browser, countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
GROUP BY browser
ORDER BY pageviews DESC, browser;

CREATE OR REPLACE VIEW top_operating_systems AS
SELECT os, countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
GROUP BY os
ORDER BY pageviews DESC, os;

CREATE OR REPLACE VIEW top_devices AS
SELECT device, countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
GROUP BY device
ORDER BY pageviews DESC, device;

-- Product adoption (seed 003): the five event families, each with its event
-- count, active workspaces and last event time (freshness) in the window, and a
-- last row `all` with the active workspaces across the five. A family with no
-- events shows 0 (FR-010) and no last event time. `tenant = '*'` is every tenant
-- (as in the aggregates); adoption_summary is that view for all tenants.
--   SELECT * FROM adoption_by_tenant(tenant = 't1', date_from = '2026-11-01', date_to = '2026-11-30')
--   SELECT * FROM adoption_summary(date_from = '2026-11-01', date_to = '2026-11-30')
CREATE OR REPLACE VIEW adoption_by_tenant AS
SELECT family, label, events, active_workspaces, last_event_at
FROM
(
    SELECT fam.family AS family, fam.label AS label, fam.position AS position,
           e.events AS events, e.active_workspaces AS active_workspaces, e.last_event_at AS last_event_at
    FROM
    (
        SELECT tupleElement(f, 1) AS family, tupleElement(f, 2) AS label, tupleElement(f, 3) AS position
        FROM (SELECT arrayJoin({families}) AS f)
    ) AS fam
    LEFT JOIN
    (
        SELECT feature_area, count() AS events, uniqExact(tenant_id, workspace_id) AS active_workspaces,
               toNullable(max(occurred_at)) AS last_event_at
        FROM product_events FINAL
        WHERE ({tenant:String} = '*' OR tenant_id = {tenant:String})
          AND toDate(occurred_at) BETWEEN {date_from:Date} AND {date_to:Date}
        GROUP BY feature_area
    ) AS e ON e.feature_area = fam.family
    UNION ALL
    SELECT 'all', 'All five families', 1000, count(), uniqExact(tenant_id, workspace_id),
           if(count() = 0, NULL, toNullable(max(occurred_at)))
    FROM product_events FINAL
    WHERE ({tenant:String} = '*' OR tenant_id = {tenant:String})
      AND toDate(occurred_at) BETWEEN {date_from:Date} AND {date_to:Date}
      AND feature_area IN {family_names}
)
ORDER BY position;

CREATE OR REPLACE VIEW adoption_summary AS
SELECT * FROM adoption_by_tenant(tenant = '*', date_from = {date_from:Date}, date_to = {date_to:Date});

-- Bad rows, each once. A stage that crashes after sending a bad row and before
-- committing its input re-reads the record and sends the same bad row again
-- (bad rows are at-least-once; the dedup token covers bad-rows' own offsets, not
-- the record they describe). One row per (component, reason, source record,
-- original bytes); rows without a Kafka source (the collector's, offset -1) are
-- all kept.
CREATE OR REPLACE VIEW bad_rows_unique AS
SELECT *
FROM bad_rows
ORDER BY failed_at
LIMIT 1 BY component, reason, source_topic, source_partition, source_offset, cityHash64(original),
           if(source_offset < 0, rowNumberInAllBlocks(), 0)
