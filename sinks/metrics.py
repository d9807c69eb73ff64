"""The sink's Prometheus metrics, served at /metrics on its query endpoint."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROWS = Counter("tally_sink_rows_total", "Rows inserted into ClickHouse.", ["table"])
BAD_RECORDS = Counter("tally_sink_bad_records_total", "Records the sink rejected (sent to bad-rows).",
                      ["topic", "reason"])
INSERT_FAILURES = Counter("tally_sink_insert_failures_total", "Failed insert attempts (retried).", ["table"])
PAUSED = Gauge("tally_sink_paused", "1 while consumption is paused because ClickHouse refuses inserts.")
PENDING_MAX = Gauge("tally_sink_pending_rows_max", "Most rows ever held in one uninserted batch (the memory bound).")
