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


def read_beacons(settings: Settings, want: int = 0, timeout: float = 30) -> list[dict[str, Any]]:
    """Every beacon in the raw topic (decoded from its batches): reads to the end of each
    partition, and on until at least `want` beacons arrived or `timeout` passed."""
    import time

    from confluent_kafka import Consumer, TopicPartition
    from tally.schemas.codec import default_codec

    from tally.kafka import consumer_config

    topic = settings.topic("beacons.raw")
    consumer = Consumer(consumer_config(settings, f"test-reader-{time.monotonic_ns()}"))
    try:
        parts = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        consumer.assign([TopicPartition(topic, p, -2) for p in parts])  # -2: from the beginning
        codec, out = default_codec(), []
        next_offset = dict.fromkeys(parts, 0)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=5)[1] for p in parts}
            if len(out) >= want and all(next_offset[p] >= ends[p] for p in parts):
                break
            for msg in consumer.consume(1000, 0.2):
                if msg.error() is None:
                    next_offset[msg.partition()] = msg.offset() + 1
                    out.extend(codec.decode("beacon_batch", msg.value())["items"])
        return out
    finally:
        consumer.close()
