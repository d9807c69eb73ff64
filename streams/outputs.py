"""The worker's output records through librdkafka, delivered before Faust commits the input;
and the window totals, emitted by a timer through a producer of their own.

Why: Faust's own send costs ~100 us of Python per record (futures, callbacks, aiokafka's
batch builder); stage 1 writes one pageview_batch per visitor partition for every input
record, and stage 2 one changelog record per batch, so with at-least-once processing those
sends were a third of the worker's time. librdkafka's produce() is a few us.

The guarantee is kept: Faust flushes its producer before every offset commit (and before a
rebalance gives partitions away); the worker gives Faust a producer whose flush first waits
until librdkafka has delivered everything produced so far (`FlushingProducer`, a subclass
set through Faust's public `App.producer`, not a patch of Faust's own object). A record is produced before its input event is
acknowledged, so no committed input can have an undelivered output. A delivery that fails
for good (after librdkafka's own retries) ends the process *before* any later commit: the
restarted worker replays from the last commit, and the idempotent window state skips what
was applied twice.

With `exactly_once` the worker keeps Faust's transactional sends instead (see app.py).
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaError, Producer
from faust.transport.drivers.aiokafka import Producer as FaustProducer
from tally.streams.session_rows import SessionEncoder
from tally.streams.state import StateStore
from tally.streams.watchdog import Watchdog
from tally.streams.windows import TotalsEncoder

from tally.config import Settings
from tally.kafka import producer_config
from tally.topics import AGGREGATES, SESSIONS

log = logging.getLogger(__name__)
PRUNE_EVERY = 30  # totals flushes between two scans for windows to forget (a scan visits every window)
CLOSE_MARGIN_MS = 3600_000  # windows are forgotten this long after they closed


@dataclass(frozen=True, slots=True)
class Out:
    """One output record of a stage: where it goes and what it holds."""

    topic: str  # the full topic name
    value: bytes
    partition: int | None = None  # None: by key (murmur2), else librdkafka's choice
    key: bytes | None = None
    headers: list[tuple[str, bytes]] | None = None


def produce(producer: Producer, topic: str, value: bytes, **kw: Any) -> None:
    """producer.produce(), waiting (polling) while librdkafka's queue is full."""
    while True:
        try:
            producer.produce(topic, value=value, **kw)
            return
        except BufferError:  # the queue is full: let it deliver some
            producer.poll(0.05)


def produce_all(producer: Producer, topic: str, records: list[tuple[bytes, bytes]]) -> int:
    """produce() of many (key, value) records (a flush has about one per event): the plain
    call while the queue takes them, the waiting one only when it is full."""
    send = producer.produce
    for key, value in records:
        try:
            send(topic, value, key)
        except BufferError:
            produce(producer, topic, value, key=key)
    return len(records)


class Outputs:
    def __init__(self, settings: Settings, watchdog: Watchdog | None = None) -> None:
        self.failed: KafkaError | None = None
        self.watchdog = watchdog
        # murmur2 for keyed records without a partition: the partitioner Java and aiokafka use.
        self.producer = Producer(producer_config(settings, on_delivery=self._delivered, partitioner="murmur2_random",
                                                 **{"delivery.report.only.error": True}))

    def _delivered(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None and self.failed is None:
            self.failed = err
            log.critical("output to %s lost after retries: %s", msg.topic() if msg else "?", err)

    def produce(self, topic: str, value: bytes, partition: int | None = None, key: bytes | None = None,
                headers: list[tuple[str, bytes]] | None = None) -> None:
        where = {} if partition is None else {"partition": partition}
        produce(self.producer, topic, value, key=key, headers=headers, **where)
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

    def faust_producer(self, app: Any) -> FlushingProducer:
        """A producer for Faust (`app.producer = ...`, before the app starts) whose flush
        delivers these outputs first."""
        return FlushingProducer(self, app.transport, beacon=app.beacon)


class FlushingProducer(FaustProducer):
    """Faust's aiokafka producer. Faust awaits its flush() before every offset commit and
    before a rebalance gives partitions away; this one first waits until the worker's own
    librdkafka outputs are delivered."""

    def __init__(self, outputs: Outputs, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.outputs = outputs

    async def flush(self) -> None:
        await self.outputs.flush()
        await super().flush()


class Totals:
    """Window totals: every TALLY_TOTALS_FLUSH_SECONDS, the current total of each window that
    changed, to `aggregates`, through a librdkafka producer of its own. A flush can carry
    thousands of totals, and their order relative to offset commits does not matter: a new
    owner of a partition re-emits every window, and the version tells old totals from new."""

    def __init__(self, settings: Settings, codec: Any, stores: Mapping[str, StateStore],
                 open_after_ms: Callable[[], int], remember_after_ms: Callable[[], int] | None = None) -> None:
        self.settings = settings
        self.topic = settings.topic(AGGREGATES)
        self.sessions_topic = settings.topic(SESSIONS)
        self.encode_session = SessionEncoder(codec)
        self.stores = stores
        self.open_after_ms = open_after_ms  # windows that ended before this are closed
        self.remember_after_ms = remember_after_ms or open_after_ms  # event ids before this are forgotten
        self.encode = TotalsEncoder(codec)
        self.flushes = 0
        self.session_flush_seconds = settings.session_flush_seconds
        self._sessions_at = float("-inf")  # monotonic time of the last session emission: the first flush has them
        self._producer: Producer | None = None

    def _started(self) -> Producer:
        if self._producer is None:
            self._producer = Producer(producer_config(self.settings))
            atexit.register(self._producer.flush, 5)  # graceful stop: deliver the last totals
        return self._producer

    async def flush(self, sessions: bool | None = None) -> int:
        """Emit the totals of the windows that changed; with `sessions` (by default: when
        TALLY_SESSION_FLUSH_SECONDS have passed since the last time) the changed sessions and
        session windows too. Deferring those loses nothing: they stay marked in the state, and
        a rebuilt state re-emits them all."""
        producer, topic, encode = self._started(), self.topic, self.encode
        self.flushes += 1
        now = time.monotonic()
        if sessions is None:
            sessions = now - self._sessions_at >= self.session_flush_seconds
        if sessions:
            self._sessions_at = now
        prune = self.flushes % PRUNE_EVERY == 0
        closed_before = self.open_after_ms() - CLOSE_MARGIN_MS
        forget_ids_before = self.remember_after_ms()
        sent = 0
        for store in self.stores.values():
            for st in list(store.states.values()):
                sent += produce_all(producer, topic, encode.many(st, st.take_dirty_windows(sessions)))
                if sessions:
                    sent += self._sessions(producer, st)
                if prune:
                    st.prune(closed_before, forget_ids_before)
                await asyncio.sleep(0)  # let the agents run between partitions
        producer.poll(0)
        return sent

    def _sessions(self, producer: Producer, st: Any) -> int:
        """The sessions that changed: their current state, or their removal, many per record.
        Like the totals, versioned, so a re-emission after a rebuild replaces nothing newer."""
        changes, topic = st.sessions.take_changes(), self.sessions_topic
        return produce_all(producer, topic, self.encode_session.batches(st.partition, st.session_events, changes))
