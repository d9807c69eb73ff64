"""Counts of beacons dropped at the edge, per (site, day, reason), sent to the drops topic.

Edge drops (GPC/DNT, rate limit, empty user agent, spool full) are answered
without forwarding the beacon, so the stream never sees them. They are
counted twice: in Prometheus right away, and as `drop_count` records
(component="collector") flushed every TALLY_DROPS_FLUSH_SECONDS, which the sink
stores next to the worker's drops. The warehouse keeps one row per source; an
edge count has no input record, so it gets source_partition -1 and a random
source_offset, and two flushes are never taken for a replay of each other.
A flush that Kafka does not take is added back and sent with the next one.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections import Counter
from collections.abc import Callable
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from tally.producers.collector.metrics import DropCounter
from tally.schemas.codec import default_codec
from tally.schemas.reasons import Component, DropReason
from tally.schemas.records import drop_count

from tally.config import Settings
from tally.topics import DROPS

log = logging.getLogger(__name__)

MS_PER_DAY = 86_400_000


class EdgeDrops:
    def __init__(self, settings: Settings, producer: Callable[[], Producer]) -> None:
        self.topic = settings.topic(DROPS)
        self.interval = settings.drops_flush_seconds
        self.producer = producer
        self.codec = default_codec(settings)
        self.metric = DropCounter()
        self.counts: Counter[tuple[str, int, DropReason]] = Counter()
        self._task: asyncio.Task[None] | None = None

    def add(self, site: str, received_ms: int, reason: DropReason, n: int = 1) -> None:
        if reason.__class__ is not DropReason:
            raise TypeError(f"expected a DropReason, got {reason!r}")
        self.metric.inc(reason, n)
        self.counts[(site, received_ms // MS_PER_DAY, reason)] += n

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
        self.flush()

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        counts, self.counts = self.counts, Counter()
        loop = asyncio.get_running_loop()
        for (site, day, reason), n in counts.items():
            record = drop_count(site, day, reason, n, Component.COLLECTOR, -1, secrets.randbits(63))

            def delivered(err: KafkaError | None, _msg: Any, key: tuple[str, int, DropReason] = (site, day, reason),
                          n: int = n) -> None:
                if err is not None:
                    loop.call_soon_threadsafe(self._retry, key, n)

            try:
                self.producer().produce(self.topic, key=site.encode(), value=self.codec.encode("drop_count", record),
                                      on_delivery=delivered)
            except (BufferError, KafkaException):
                self.counts[(site, day, reason)] += n

    def _retry(self, key: tuple[str, int, DropReason], n: int) -> None:
        self.counts[key] += n
