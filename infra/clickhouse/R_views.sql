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

-- Sessions (visits): the stream counts each visit once, in the hour (entry and exit pages:
-- the day) it started, so days and months are sums of hours. Durations are in ms.
CREATE OR REPLACE VIEW session_stats_hourly AS
SELECT scope AS site, toDateTime(window_start, 'UTC') AS hour,
       sumIf(count, kind = 'visits_hour') AS visits, sumIf(count, kind = 'bounces_hour') AS bounces,
       sumIf(count, kind = 'visit_duration_hour') AS duration_ms
FROM aggregates FINAL WHERE kind IN ('visits_hour', 'bounces_hour', 'visit_duration_hour')
GROUP BY site, hour;

CREATE OR REPLACE VIEW session_stats_daily AS
SELECT site, toDate(hour) AS day, sum(visits) AS visits, sum(bounces) AS bounces,
       sum(duration_ms) AS total_duration_ms, if(visits = 0, 0, bounces / visits) AS bounce_rate,
       if(visits = 0, 0, total_duration_ms / visits / 1000) AS visit_duration_seconds
FROM session_stats_hourly
GROUP BY site, day;

CREATE OR REPLACE VIEW session_stats_monthly AS
SELECT site, toStartOfMonth(hour) AS month, sum(visits) AS visits, sum(bounces) AS bounces,
       sum(duration_ms) AS total_duration_ms, if(visits = 0, 0, bounces / visits) AS bounce_rate,
       if(visits = 0, 0, total_duration_ms / visits / 1000) AS visit_duration_seconds
FROM session_stats_hourly
GROUP BY site, month;

CREATE OR REPLACE VIEW entry_pages_daily AS
SELECT scope AS site, toDate(window_start) AS day, dimension AS path, sum(count) AS visits
FROM aggregates FINAL WHERE kind = 'entry_page_day'
GROUP BY site, day, path HAVING visits > 0;

CREATE OR REPLACE VIEW exit_pages_daily AS
SELECT scope AS site, toDate(window_start) AS day, dimension AS path, sum(count) AS visits
FROM aggregates FINAL WHERE kind = 'exit_page_day'
GROUP BY site, day, path HAVING visits > 0;

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
-- visitors with any event (custom events included; engagement events are not events).
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
       ifNull(utm_content, '') AS utm_content, ifNull(utm_term, '') AS utm_term,
       countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
  AND event != 'engagement'
GROUP BY source, referrer_host, utm_source, utm_medium, utm_campaign, utm_content, utm_term
ORDER BY pageviews DESC, source, referrer_host;

CREATE OR REPLACE VIEW top_browsers AS
SELECT browser, countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
  AND event != 'engagement'
GROUP BY browser
ORDER BY pageviews DESC, browser;

-- Countries (ISO 3166-1 alpha-2, '' = unknown) from the raw rows, with the visits that
-- entered from each (a visit's country is its entry pageview's).
CREATE OR REPLACE VIEW top_countries AS
SELECT p.country AS country, p.pageviews AS pageviews, p.visitors AS visitors, ifNull(v.visits, 0) AS visits
FROM (
    SELECT country, countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
    FROM pageviews
    WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
      AND event != 'engagement'
    GROUP BY country
) AS p
LEFT JOIN (
    SELECT country, count() AS visits
    FROM sessions FINAL
    WHERE site = {site:String} AND toDate(session_start) BETWEEN {date_from:Date} AND {date_to:Date}
    GROUP BY country
) AS v USING (country)
ORDER BY pageviews DESC, country;

CREATE OR REPLACE VIEW top_operating_systems AS
SELECT os, countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
  AND event != 'engagement'
GROUP BY os
ORDER BY pageviews DESC, os;

CREATE OR REPLACE VIEW top_devices AS
SELECT device, countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors
FROM pageviews FINAL
WHERE site = {site:String} AND toDate(received_at) BETWEEN {date_from:Date} AND {date_to:Date}
  AND event != 'engagement'
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
;

-- The daily breakdown rollups in force (sinks/rollups.py): per site, day, Stats API
-- dimension and value (Plausible's words: `Google`, `Direct / None`, `Mobile`, ...), the
-- pageviews, exact visitors and events of that day. Days are those the sink has computed:
-- days that are over; today is not here.
--   SELECT value AS source, sum(visitors) FROM breakdowns_daily
--   WHERE site = 'example.com' AND dimension = 'visit:source' AND day >= today() - 30 GROUP BY source
CREATE OR REPLACE VIEW breakdowns_daily AS
SELECT site, day, dimension, value, pageviews, visitors, events
FROM daily_stats
WHERE (site, day, version) IN (SELECT site, day, version FROM daily_stats_log FINAL);

-- Seeds 001 and 004: named views over product_events (FINAL: each event once).
-- Metadata values are strings in the map: numbers are read with toInt64OrZero, and
-- lists of enum values are comma-joined (has(splitByChar(',', ...), 'value')).

-- API latency and errors per tenant, route, method and minute, from the middleware's
-- api.request_rollup events (a process sends one per route, method and minute, and the
-- sums add the processes up). le_* are cumulative counts by latency bound.
CREATE OR REPLACE VIEW api_routes_minutely AS
SELECT tenant_id AS tenant, metadata['route'] AS route, metadata['method'] AS method,
       toDateTime(intDiv(toInt64OrZero(metadata['minute']), 1000), 'UTC') AS minute,
       sum(toInt64OrZero(metadata['count'])) AS requests,
       sum(toInt64OrZero(metadata['errors'])) AS errors,
       sum(toInt64OrZero(metadata['client_errors'])) AS client_errors,
       sum(toInt64OrZero(metadata['duration_sum_ms'])) AS duration_sum_ms,
       max(toInt64OrZero(metadata['duration_max_ms'])) AS duration_max_ms,
       sum(toInt64OrZero(metadata['le_50ms'])) AS le_50ms, sum(toInt64OrZero(metadata['le_100ms'])) AS le_100ms,
       sum(toInt64OrZero(metadata['le_250ms'])) AS le_250ms, sum(toInt64OrZero(metadata['le_500ms'])) AS le_500ms,
       sum(toInt64OrZero(metadata['le_1000ms'])) AS le_1000ms, sum(toInt64OrZero(metadata['le_2000ms'])) AS le_2000ms,
       sum(toInt64OrZero(metadata['le_5000ms'])) AS le_5000ms
FROM product_events FINAL WHERE event = 'api.request_rollup'
GROUP BY tenant, route, method, minute;

-- Per day: error rate and p95 per route. p95_ms is the smallest histogram bound that
-- holds 95% of the requests (NULL: above 5000 ms).
CREATE OR REPLACE VIEW api_routes_daily AS
SELECT tenant, route, method, toDate(minute) AS day, sum(requests) AS requests, sum(errors) AS errors,
       sum(client_errors) AS client_errors, if(requests = 0, 0, errors / requests) AS error_rate,
       if(requests = 0, 0, sum(duration_sum_ms) / requests) AS mean_ms, max(duration_max_ms) AS max_ms,
       multiIf(sum(le_50ms) >= 0.95 * requests, 50, sum(le_100ms) >= 0.95 * requests, 100,
               sum(le_250ms) >= 0.95 * requests, 250, sum(le_500ms) >= 0.95 * requests, 500,
               sum(le_1000ms) >= 0.95 * requests, 1000, sum(le_2000ms) >= 0.95 * requests, 2000,
               sum(le_5000ms) >= 0.95 * requests, 5000, NULL) AS p95_ms
FROM api_routes_minutely
GROUP BY tenant, route, method, day;

-- Slow and failing service operations (track_performance) per day.
CREATE OR REPLACE VIEW slow_operations_daily AS
SELECT tenant_id AS tenant, toDate(occurred_at) AS day, metadata['operation'] AS operation,
       countIf(event = 'service_operation.slow') AS slow, countIf(event = 'service_operation.failed') AS failed,
       quantileExactIf(0.95)(toInt64OrZero(metadata['duration_ms']), event = 'service_operation.slow') AS slow_p95_ms
FROM product_events FINAL WHERE feature_area = 'service_operation'
GROUP BY tenant, day, operation;

-- Ticket volume and resolution time by priority (seed 001).
CREATE OR REPLACE VIEW ticket_volume_daily AS
SELECT tenant_id AS tenant, toDate(occurred_at) AS day, metadata['priority_id'] AS priority_id,
       countIf(event = 'ticket.created') AS created, countIf(event = 'ticket.resolved') AS resolved,
       avgIf(toInt64OrZero(metadata['time_to_resolution_minutes']),
             event = 'ticket.resolved' AND mapContains(metadata, 'time_to_resolution_minutes')) AS avg_resolution_minutes
FROM product_events FINAL WHERE event IN ('ticket.created', 'ticket.resolved')
GROUP BY tenant, day, priority_id;

-- Login failures by reason (seed 001).
CREATE OR REPLACE VIEW login_failures_daily AS
SELECT tenant_id AS tenant, toDate(occurred_at) AS day, metadata['failure_reason'] AS failure_reason,
       metadata['provider'] AS provider, count() AS failures
FROM product_events FINAL WHERE event = 'auth.login_failed'
GROUP BY tenant, day, failure_reason, provider;

-- Timer usage (seed 004): timers started, stopped, auto-stopped when idle, and tracked time.
CREATE OR REPLACE VIEW timer_usage_daily AS
SELECT tenant_id AS tenant, toDate(occurred_at) AS day,
       countIf(event = 'timer.started') AS started, countIf(event = 'timer.stopped') AS stopped,
       countIf(event = 'timer.idle_detected') AS idle_stopped,
       uniqExactIf(actor_id, event = 'timer.started') AS users,
       sumIf(toInt64OrZero(metadata['duration_seconds']), event IN ('timer.stopped', 'timer.idle_detected'))
           AS tracked_seconds
FROM product_events FINAL WHERE feature_area = 'timer'
GROUP BY tenant, day;

-- Invoice totals by status and currency (seed 004): created totals, paid amounts, sent counts.
-- Amounts are minor units (cents), never summed across currencies.
CREATE OR REPLACE VIEW invoice_totals_daily AS
SELECT tenant_id AS tenant, toDate(occurred_at) AS day, splitByChar('.', event)[2] AS status,
       metadata['currency'] AS currency, count() AS invoices,
       sum(toInt64OrZero(if(event = 'invoice.paid', metadata['amount'], metadata['total_amount']))) AS amount_minor
FROM product_events FINAL WHERE feature_area = 'invoice'
GROUP BY tenant, day, status, currency
