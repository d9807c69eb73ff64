"""The stream worker's Prometheus endpoint: GET /metrics on TALLY_WORKER_METRICS_HOST (loopback
by default) and TALLY_WORKER_METRICS_PORT (0: a free port, so workers can share a host).

It serves the process-wide prometheus_client registry, so other parts of the worker can add
metrics of their own, plus the worker's own view, read when scraped:

- tally_worker_step_seconds_total / tally_worker_step_items_total {stage, step}: time spent in
  each step of each stage (stage 1's STEPS, enrich; stage 2's decode and apply; ...) and the
  items that entered it;
- tally_worker_records_total {stage}, tally_worker_events_accepted_total {stage};
- tally_worker_dropped_total {reason} (DropReason), tally_worker_bad_rows_total {reason}
  (BadRowReason);
- tally_worker_repeated_events_total {kind}: events (web, product) not counted again because
  their event_id was applied before (a collector's replay, an SDK's resend), and tally_worker_remembered_event_ids
  {kind}: the ids held to recognise them;
- the watchdog's view: tally_worker_partition_lag and tally_worker_partition_stalled_seconds
  {topic, partition} (records left, and seconds without progress while records were left),
  tally_worker_waits and tally_worker_longest_wait_seconds (named waits: a salt, a state
  rebuild, an output flush), tally_worker_stall_limit_seconds, and
  tally_worker_rebuilding_partitions {kind}.

Nothing here names a site, a visitor or a salt. The endpoint answers GET /metrics only.
"""

from __future__ import annotations

import logging
import socket
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from tally.streams.metrics import WorkerCounts
from tally.streams.state import StateStore
from tally.streams.watchdog import Watchdog

from tally.config import Settings

log = logging.getLogger(__name__)


class WorkerCollector(Collector):
    def __init__(self, counts: WorkerCounts, watchdog: Watchdog, stores: Mapping[str, StateStore]) -> None:
        self.counts, self.watchdog, self.stores = counts, watchdog, stores

    def collect(self) -> Iterator[Metric]:
        c = self.counts
        # list(...) copies each dict in one C call: the event loop thread cannot change it meanwhile.
        yield _counter("tally_worker_step_seconds", "Seconds spent in each step of each stage.",
                       ["stage", "step"], list(c.steps.seconds.items()))
        yield _counter("tally_worker_step_items", "Items (beacons; records in stage 2) that entered each step.",
                       ["stage", "step"], list(c.steps.items.items()))
        yield _counter("tally_worker_records", "Input records handled, by stage.", ["stage"],
                       [((k,), v) for k, v in list(c.records.items())])
        yield _counter("tally_worker_events_accepted", "Events that went on (pageviews, valid product events).",
                       ["stage"], [((k,), v) for k, v in list(c.accepted.items())])
        yield _counter("tally_worker_dropped", "Events dropped and counted, by DropReason.", ["reason"],
                       [((k,), v) for k, v in list(c.dropped.items())])
        yield _counter("tally_worker_bad_rows", "Records sent to bad-rows, by BadRowReason.", ["reason"],
                       [((k,), v) for k, v in list(c.bad_rows.items())])
        yield _counter("tally_worker_repeated_events",
                       "Events left out of the window state because their event_id was applied before.",
                       ["kind"], [((k,), v) for k, v in list(c.repeated.items())])
        yield _gauge("tally_worker_remembered_event_ids",
                     "Event ids held to recognise repeats (those of the open windows), over held partitions.",
                     ["kind"], [((kind,), sum(st.seen_events.count for st in list(store.states.values())))
                                for kind, store in self.stores.items()])
        view = self.watchdog.view  # replaced whole at every check
        yield _per_partition("tally_worker_partition_lag", "Records left to process, per held partition (last check).",
                             view, 0)
        yield _per_partition("tally_worker_partition_stalled_seconds",
                             "Seconds a held partition with records left has made no progress (last check).", view, 1)
        waits = self.watchdog.wait_ages()
        yield _gauge("tally_worker_waits", "Named waits in progress (a salt, a state rebuild, an output flush).",
                     [], [((), len(waits))])
        yield _gauge("tally_worker_longest_wait_seconds", "Age of the oldest wait in progress.", [],
                     [((), max(waits, default=0.0))])
        yield _gauge("tally_worker_stall_limit_seconds", "TALLY_WORKER_STALL_SECONDS (0: the watchdog is off).",
                     [], [((), self.watchdog.stall_seconds)])
        yield _gauge("tally_worker_rebuilding_partitions", "Partitions whose window state is being rebuilt.",
                     ["kind"], [((kind,), len(store.loading())) for kind, store in self.stores.items()])
        commits = self.watchdog.commit_view  # replaced whole at every check
        yield _per_partition("tally_worker_uncommitted_records",
                             "Records processed but not yet committed (last check).", commits, 0)
        yield _per_partition("tally_worker_uncommitted_seconds",
                             "Seconds the committed offset has not moved while processed records waited (last check).",
                             commits, 1)
        held = {kind: list(store.states.values()) for kind, store in self.stores.items()}
        yield _gauge("tally_worker_state_windows", "Open windows held, over held partitions.", ["kind"],
                     [((kind,), sum(len(st.windows) for st in states)) for kind, states in held.items()])
        # len() of the dicts only: the event loop thread changes them while this thread reads.
        yield _gauge("tally_worker_state_session_visitors", "Visitors with open sessions, over held partitions.",
                     ["kind"], [((kind,), sum(len(st.sessions.last) for st in states))
                                for kind, states in held.items()])
        yield _gauge("tally_worker_rebuild_seconds", "Seconds the last rebuild of a held partition's state took.",
                     ["kind", "partition"], [((kind, str(p)), secs) for kind, store in self.stores.items()
                                             for p, secs in list(store.rebuild_seconds.items())])


def _counter(name: str, doc: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    m = CounterMetricFamily(name, doc, labels=labels)
    for key, value in values:
        m.add_metric(list(key), value)
    return m


def _gauge(name: str, doc: str, labels: list[str], values: Iterable[tuple[tuple[str, ...], float]]) -> Metric:
    m = GaugeMetricFamily(name, doc, labels=labels)
    for key, value in values:
        m.add_metric(list(key), value)
    return m


def _per_partition(name: str, doc: str, view: Mapping[tuple[str, int], tuple[float, float]], i: int) -> Metric:
    """A gauge per (topic, partition) of one of the watchdog's views: the i-th figure of each."""
    return _gauge(name, doc, ["topic", "partition"], [((t, str(p)), v[i]) for (t, p), v in view.items()])


class _Both(Collector):
    """The process-wide registry's metrics, then the worker's own."""

    def __init__(self, *sources: Any) -> None:
        self.sources = sources

    def collect(self) -> Iterator[Metric]:
        for source in self.sources:
            yield from source.collect()


class _Server(ThreadingMixIn, WSGIServer):
    daemon_threads = True


class _Server6(_Server):
    address_family = socket.AF_INET6


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no client addresses in the logs
        return


def _app(metrics: Collector) -> Callable[..., Any]:
    def serve(environ: dict[str, Any], start_response: Callable[..., Any]) -> Any:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"not found: the worker serves GET /metrics only\n"]
        if environ.get("REQUEST_METHOD") not in ("GET", "HEAD"):
            start_response("405 Method Not Allowed", [("Content-Type", "text/plain"), ("Allow", "GET, HEAD")])
            return [b"method not allowed: GET /metrics\n"]
        body = generate_latest(metrics)  # type: ignore[arg-type]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST), ("Content-Length", str(len(body)))])
        return [body] if environ["REQUEST_METHOD"] == "GET" else []
    return serve


def serve(settings: Settings, collector: Collector) -> tuple[str, WSGIServer] | None:
    """Start the endpoint in a daemon thread; (its URL, the server), or None when it is off."""
    if settings.worker_metrics_port is None:
        return None
    host = settings.worker_metrics_host
    server = make_server(host, settings.worker_metrics_port, _app(_Both(REGISTRY, collector)),
                         _Server6 if ":" in host else _Server, handler_class=_Quiet)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    port = server.server_address[1]
    url = f"http://[{host}]:{port}/metrics" if ":" in host else f"http://{host}:{port}/metrics"
    log.info("metrics on %s", url)
    return url, server
