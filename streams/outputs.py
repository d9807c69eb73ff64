"""The worker's output records through librdkafka, delivered before Faust commits the input.

Why: Faust's own send costs ~100 us of Python per record (futures, callbacks, aiokafka's
batch builder); stage 1 writes one pageview_batch per visitor partition for every input
record, and stage 2 one changelog record per batch, so with at-least-once processing those
sends were a third of the worker's time. librdkafka's produce() is a few us.

The guarantee is kept: Faust flushes its producer before every offset commit (and before a
rebalance gives partitions away); `attach()` makes that flush also wait until librdkafka
has delivered everything produced so far. A record is produced before its input event is
acknowledged, so no committed input can have an undelivered output. A delivery that fails
for good (after librdkafka's own retries) ends the process *before* any later commit: the
restarted worker replays from the last commit, and the idempotent window state skips what
was applied twice.

With `exactly_once` the worker keeps Faust's transactional sends instead (see app.py).
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any

from confluent_kafka import KafkaError, Producer
from tally.streams.watchdog import Watchdog

from tally.config import Settings
from tally.kafka import producer_config

log = logging.getLogger(__name__)


class Outputs:
    def __init__(self, settings: Settings, watchdog: Watchdog | None = None) -> None:
        self.failed: KafkaError | None = None
        self.watchdog = watchdog
        # murmur2 for keyed records without a partition: the partitioner Java and aiokafka use.
        self.producer = Producer(producer_config(settings, on_delivery=self._delivered, partitioner="murmur2_random",
                                                 **{"delivery.report.only.error": True}))
        self.attached = False

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and self.failed is None:
            self.failed = err
            log.critical("output to %s lost after retries: %s", msg.topic() if msg else "?", err)

    def produce(self, topic: str, value: bytes, partition: int | None = None, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        where = {} if partition is None else {"partition": partition}
        while True:
            try:
                self.producer.produce(topic, value=value, key=key, headers=headers, **where)
                break
            except BufferError:  # librdkafka's queue is full: let it deliver some
                self.producer.poll(0.05)
        self.producer.poll(0)

    def flush_blocking(self, progress: Any = lambda: None) -> None:
        """Wait until every record produced so far is delivered; never return after a loss."""
        left = len(self.producer)
        while self.producer.flush(5) > 0:
            log.warning("waiting for the broker to take %d output records", len(self.producer))
            if len(self.producer) < left:
                left = len(self.producer)
                progress()
        if self.failed is not None:
            # Exit now, before Faust can commit past the lost record (see the module doc).
            log.critical("exiting so the input is replayed from the last commit")
            logging.shutdown()
            os._exit(70)

    async def flush(self) -> None:
        if self.watchdog is None:
            return await self._flush()
        with self.watchdog.waiting(f"the broker to take {len(self.producer)} output records") as touch:
            await self._flush(touch)

    async def _flush(self, progress: Any = lambda: None) -> None:
        try:
            await asyncio.get_running_loop().run_in_executor(None, self.flush_blocking, progress)
        except RuntimeError:  # the executor is shut down (worker stopping): flush in place
            self.flush_blocking(progress)

    def attach(self, app: Any) -> None:
        """Make Faust's pre-commit producer flush also flush these outputs."""
        faust_producer = app.producer
        faust_flush = faust_producer.flush

        async def flush_both() -> None:
            await self.flush()
            await faust_flush()

        faust_producer.flush = flush_both
        self.attached = True
