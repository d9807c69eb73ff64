"""Small helpers for tests that drive real components over the wire."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

from tally.config import Settings

# A real browser's User-Agent: beacons without one are classified as bots and dropped.
BROWSER_UA = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
              "Chrome/126.0.0.0 Safari/537.36")


def post_json(url: str, body: Any, headers: dict[str, str] | None = None, raw: bytes | None = None,
              timeout: float = 15) -> tuple[int, bytes, dict[str, str]]:
    data = raw if raw is not None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read(), dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read(), dict(exc.headers)


def collect_url(settings: Settings) -> str:
    return f"http://{settings.collector_host}:{settings.collector_port}/api/v1/collect"


def query_rows(settings: Settings, sql: str) -> list[list[Any]]:
    """Rows of a read-only query, through the sink's endpoint or chDB directly."""
    from tally.sinks.query import run_sql

    return json.loads(run_sql(settings, sql, "JSONCompact"))["data"]


def led_partitions(consumer: Any, topic: str, timeout: float = 30) -> list[int]:
    """The topic's partitions, once the metadata names a leader for each: a just-created topic
    or a just-started broker answers offset requests with NOT_LEADER until then."""
    import time

    deadline = time.monotonic() + timeout
    while True:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        if parts and all(p.leader >= 0 and p.error is None for p in parts.values()):
            return sorted(parts)
        if time.monotonic() > deadline:
            raise AssertionError(f"{topic}: partitions without a leader after {timeout}s: "
                                 f"{ {i: (p.leader, p.error) for i, p in parts.items()} }")
        time.sleep(0.2)


def read_beacons(settings: Settings, want: int = 0, timeout: float = 30) -> list[dict[str, Any]]:
    """Every beacon in the raw topic (decoded from its batches): reads to the end of each
    partition, and on until at least `want` beacons arrived or `timeout` passed."""
    return [b for record in read_beacon_records(settings, want, timeout) for b in record]


def read_beacon_records(settings: Settings, want: int = 0, timeout: float = 30) -> list[list[dict[str, Any]]]:
    """The raw topic's records, each as the beacons it carries (see read_beacons)."""
    import time

    from confluent_kafka import Consumer, TopicPartition
    from tally.schemas.codec import default_codec

    from tally.kafka import consumer_config

    topic = settings.topic("beacons.raw")
    consumer = Consumer(consumer_config(settings, f"test-reader-{time.monotonic_ns()}"))
    try:
        parts = led_partitions(consumer, topic)
        consumer.assign([TopicPartition(topic, p, -2) for p in parts])  # -2: from the beginning
        codec, out, seen = default_codec(), [], 0
        next_offset = dict.fromkeys(parts, 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in parts}
            if seen >= want and all(next_offset[p] >= ends[p] for p in parts):
                break
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    next_offset[msg.partition()] = msg.offset() + 1
                    out.append(codec.decode("beacon_batch", msg.value())["items"])
                    seen += len(out[-1])
        return out
    finally:
        consumer.close()


class BeaconLoad:
    """Beacons sent to a running collector from a pool of threads, each with its own path
    (`<prefix><i>`), until stopped or `total` were sent. Records which were acknowledged
    (2xx: the collector says durable) and every other answer, so a test can check that the
    warehouse holds exactly the acknowledged ones.

        load = BeaconLoad(settings, "/chaos/", threads=16).start()
        load.wait_sent(1000); ...break something...; load.stop()
        assert not load.failed and len(load.acked) == load.sent
    """

    def __init__(self, settings: Settings, prefix: str, threads: int = 16, total: int | None = None,
                 rate: float | None = None, site: str = "example.com", timeout: float = 30) -> None:
        """rate: beacons per second over all threads (None: as fast as they are answered)."""
        import threading
        import time

        self.url = collect_url(settings)
        self.prefix, self.threads, self.total, self.site, self.timeout = prefix, threads, total, site, timeout
        self.acked: set[str] = set()
        self.failed: dict[str, str] = {}  # path -> status or error of a beacon not acknowledged
        self.sent = 0
        self.rate = rate
        self._t0 = time.monotonic()
        self._next = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._workers = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> BeaconLoad:
        import time

        self._t0 = time.monotonic()
        for t in self._workers:
            t.start()
        return self

    def _take(self) -> int | None:
        import time

        with self._lock:
            if self._stop.is_set() or (self.total is not None and self._next >= self.total):
                return None
            self._next += 1
            i = self._next - 1
        if self.rate:  # beacon i is due i/rate seconds after the start
            time.sleep(max(0.0, self._t0 + i / self.rate - time.monotonic()))
        return i

    def _run(self) -> None:
        while (i := self._take()) is not None:
            path = f"{self.prefix}{i}"
            try:
                status, body, _ = post_json(self.url, {"site": self.site, "path": path},
                                            headers={"User-Agent": BROWSER_UA}, timeout=self.timeout)
                outcome = status if 200 <= status < 300 else f"{status} {body[:200]!r}"
            except Exception as exc:  # a timeout or a refused connection: not acknowledged
                outcome = f"{type(exc).__name__}: {exc}"
            with self._lock:
                self.sent += 1
                if isinstance(outcome, int):
                    self.acked.add(path)
                else:
                    self.failed[path] = outcome

    def wait_sent(self, n: int, timeout: float = 120) -> None:
        import time

        deadline = time.monotonic() + timeout
        while self.sent < n:
            if time.monotonic() > deadline or not any(t.is_alive() for t in self._workers):
                raise AssertionError(f"only {self.sent} of {n} beacons sent")
            time.sleep(0.05)

    def stop(self) -> None:
        """Stop sending; returns once every request in flight was answered."""
        self._stop.set()
        for t in self._workers:
            t.join()

    def join(self) -> None:
        """Wait until `total` beacons were sent."""
        for t in self._workers:
            t.join()
