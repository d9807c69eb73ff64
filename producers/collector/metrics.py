"""Prometheus metrics of the collector, served at /metrics.

With `--workers N` the processes share one port, so a scrape lands on any
of them; the supervisor then sets PROMETHEUS_MULTIPROC_DIR and every worker
writes its values there (prometheus-client's multiprocess mode), and
/metrics adds them up.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from tally.schemas.reasons import DropReason

REQUESTS = Counter("tally_collector_requests_total", "HTTP requests by route and status.",
                   ["route", "status"])
ACCEPTED = Counter("tally_collector_beacons_accepted_total",
                   "Beacons made durable (Kafka ack or spool fsync) and answered 2xx.")
DROPPED = Counter("tally_collector_beacons_dropped_total",
                  "Beacons dropped at the edge, by reason (they were answered 2xx or 503).", ["reason"])
SPOOL_ENTRIES = Gauge("tally_collector_spool_entries",
                      "Micro-batches in the on-disk spool waiting for the broker.",
                      multiprocess_mode="livesum")
SPOOL_BYTES = Gauge("tally_collector_spool_bytes", "Size of the on-disk spool files.",
                    multiprocess_mode="livesum")
SPOOLED = Counter("tally_collector_spooled_beacons_total",
                  "Beacons written to the spool because the broker did not acknowledge in time.")
SPOOL_CORRUPT = Counter("tally_collector_spool_corrupt_batches_total",
                        "Spooled micro-batches found corrupt (on open or at replay), and lost, by reason.",
                        ["reason"])
REPLAYED = Counter("tally_collector_replayed_batches_total",
                   "Spooled micro-batches delivered to Kafka after the broker came back.")
PRODUCE_SECONDS = Histogram(
    "tally_collector_produce_seconds", "From handing a micro-batch to the Kafka client to its acknowledgement.",
    buckets=(0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))


def render() -> tuple[bytes, str]:
    """The text exposition of every metric (summed over workers in multiprocess mode)."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        from prometheus_client import multiprocess

        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry), CONTENT_TYPE_LATEST
    return generate_latest(), CONTENT_TYPE_LATEST


class RequestCounter:
    """Requests by (route, status), counted in a plain dict and copied into REQUESTS by sync().

    Counter.inc() takes a lock and, in multiprocess mode, writes an mmap'd
    file: a few µs that every request would pay. sync() runs once a second
    and before each scrape this worker serves.
    """

    def __init__(self) -> None:
        self.counts: dict[tuple[str, int], int] = {}
        self._synced: dict[tuple[str, int], int] = {}

    def inc(self, route: str, status: int) -> None:
        key = (route, status)
        self.counts[key] = self.counts.get(key, 0) + 1

    def sync(self) -> None:
        for key, n in list(self.counts.items()):
            delta = n - self._synced.get(key, 0)
            if delta:
                REQUESTS.labels(key[0], str(key[1])).inc(delta)
                self._synced[key] = n


class DropCounter:
    def __init__(self) -> None:
        self._children: dict[str, Counter] = {}

    def inc(self, reason: DropReason, n: int = 1) -> None:
        child = self._children.get(reason)
        if child is None:
            child = self._children[reason] = DROPPED.labels(reason)
        child.inc(n)
