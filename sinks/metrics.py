"""The sink's Prometheus metrics, served at /metrics on its query endpoint."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROWS = Counter("tally_sink_rows_total", "Rows inserted into ClickHouse.", ["table"])
BAD_RECORDS = Counter("tally_sink_bad_records_total", "Records the sink rejected (sent to bad-rows).",
                      ["topic", "reason"])
INSERT_FAILURES = Counter("tally_sink_insert_failures_total", "Failed insert attempts (retried).", ["table"])
PAUSED = Gauge("tally_sink_paused", "1 while consumption is paused because ClickHouse refuses inserts.")
PENDING_MAX = Gauge("tally_sink_pending_rows_max", "Most rows ever held in one uninserted batch (the memory bound).")
# Where a row's wait in the sink goes (an operator's view of freshness; bench/e2e.py reads them).
FLUSHES = Counter("tally_sink_flushes_total", "Batches inserted (each: intent commit, inserts, commit).")
FLUSH_SECONDS = Counter("tally_sink_flush_seconds_total", "Wall-clock time of the flushes, by step: intent (the "
                        "commit recording the batch's end offsets), insert (every table), commit.", ["step"])
BATCH_AGE = Counter("tally_sink_batch_age_seconds_total", "Sum over flushes of the batch's age when its flush "
                    "began (since its first record was taken): the wait for TALLY_SINK_BATCH_SECONDS or _ROWS.")
RECORD_AGE = Counter("tally_sink_record_age_seconds_total", "Sum over the records taken of the time from their "
                     "Kafka timestamp (when the worker or collector produced them) to the sink taking them, by "
                     "the table they go to.", ["table"])
RECORDS_TAKEN = Counter("tally_sink_records_taken_total", "Records taken into a batch, by the table they go to "
                        "(the count behind tally_sink_record_age_seconds_total).", ["table"])
