"""Forwards accepted beacons to Kafka in micro-batches and reports when each is durable.

A request waits until its beacon's micro-batch is durable before it is
answered, so a 2xx always means durable. Durable is one of:

- acknowledged by Kafka (acks=all), or
- written to the on-disk spool and fsync'd (spool.py).

Two modes:

- **online**: each micro-batch is produced; if Kafka has not acknowledged it
  within TALLY_SPOOL_AFTER_MS, the batch is also written to the spool, its
  requests are answered, and the forwarder switches to spooling. Such a batch
  stays in librdkafka's queue ("in flight"): if librdkafka delivers it later,
  its spool entry is acknowledged and never replayed, so the broker's
  return does not duplicate it; only if librdkafka fails it (a
  non-retriable error) is it replayed from the spool.
- **spooling**: new batches go straight to the spool (no point waiting for a
  broker known to be away). A replay task probes the broker and, once it
  answers, produces the spooled batches in the order they were written. When
  the spool is empty, the forwarder is online again. New batches keep going
  to the spool until then, so replay order is acceptance order.

A replayed batch is the same bytes as the original, so every beacon keeps
the event_id minted at acceptance: a duplicate that slips through (a crash
between Kafka's ack and the spool's ACK record) is recognisable downstream.

This module is the state machine (online, spooling) and the online path; the producer and
its poll thread are in kafka_link.py, spool writing and replay in spooling.py.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from functools import partial
from typing import Any

from confluent_kafka import KafkaError, KafkaException
from tally.producers.collector import metrics
from tally.producers.collector.encode import beacon_encoder
from tally.producers.collector.kafka_link import ProducerLink
from tally.producers.collector.microbatch import MicroBatch, resolve, set_once
from tally.producers.collector.spooling import Replayer, Spooler
from tally.schemas.codec import default_codec

from tally.config import Settings
from tally.topics import BEACONS_RAW

log = logging.getLogger(__name__)

ONLINE, SPOOLING = "online", "spooling"
# A gathered batch this large goes at the end of the loop pass: the stream worker's cost per
# record is spread thin enough by then, and at high rates beacons need not wait the window.
GATHER_FILL = 64


class Forwarder:
    def __init__(self, settings: Settings, worker_index: int = 0, max_batch: int = 500) -> None:
        self.settings = settings
        self.topic = settings.topic(BEACONS_RAW)
        self.max_batch = max_batch
        self.spool_after = settings.spool_after_ms / 1000
        self.gather = settings.collector_batch_ms / 1000
        # Open client connections (set by the server; None: unknown). A beacon waits for
        # company only while a connection without a request in progress could bring some.
        self.connections: Callable[[], int] | None = None
        self.unanswered = 0  # beacons submitted whose requests are not answered yet
        self.encoder = beacon_encoder(default_codec(settings))
        self.mode = ONLINE
        self.broker_ok = True
        self._wake = asyncio.Event()  # the replayer waits on it while online
        self.link = ProducerLink(settings, on_fatal=self._enter_spooling, on_replaced=self._wake.set)
        self.spooler = Spooler(settings, worker_index)
        self._items: list[Any] = []  # encoded beacons (or dicts: see encode.py) of the next batch
        self._durable: asyncio.Future[bool] | None = None  # what their requests wait on
        self._flush_handle: asyncio.Handle | None = None
        self._flush_soon = False  # the flush is due at the end of this loop pass, not on a timer
        self._loop: asyncio.AbstractEventLoop | None = None
        self._replayer: asyncio.Task[None] | None = None

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        spool = await self.spooler.open()
        if spool.pending_count:
            log.info("spool holds %d batches from before; replaying", spool.pending_count)
            self.mode = SPOOLING
        self.link.start(self._loop)
        replayer = Replayer(self.spooler, self.link, self.topic, self, self._wake)
        self._replayer = asyncio.create_task(replayer.run())

    async def close(self) -> None:
        self._flush()
        if self._replayer is not None:
            self._replayer.cancel()
        loop = asyncio.get_running_loop()
        # Let in-flight batches finish so their spool entries are acknowledged.
        await loop.run_in_executor(None, self.link.producer.flush, 5)
        await asyncio.sleep(0.05)  # run the delivery callbacks just scheduled
        await self.spooler.drain()
        self.link.stop()
        await self.spooler.close()

    # --- accepting beacons -----------------------------------------------------------

    def submit(self, item: Any) -> asyncio.Future[bool]:
        """A future of the beacon (an item of self.encoder): True once it is durable, False
        if it cannot be (the broker is away and the spool is full). It is its micro-batch's
        future, shared by every beacon in it (they become durable together)."""
        fut = self._durable
        if fut is None:
            fut = self._durable = self._loop.create_future()  # type: ignore[union-attr]
        self._items.append(item)
        self.unanswered += 1
        n = len(self._items)
        if n >= self.max_batch:
            self._flush()
        elif self._flush_soon:
            pass
        elif not self.gather or n >= GATHER_FILL or not self._company_possible():
            # Flush once the event loop has handled every request that is ready now: under
            # load one loop pass carries many requests, so batches grow by themselves.
            if self._flush_handle is not None:
                self._flush_handle.cancel()
            self._flush_handle = self._loop.call_soon(self._flush)  # type: ignore[union-attr]
            self._flush_soon = True
        elif self._flush_handle is None:
            # TALLY_COLLECTOR_BATCH_MS: wait that long for company. Fewer, larger records
            # cost the broker and the stream worker less (their cost is mostly per record).
            self._flush_handle = self._loop.call_later(self.gather, self._flush)  # type: ignore[union-attr]
        return fut

    def _company_possible(self) -> bool:
        """Whether another beacon could join the batch while it waits: not when every open
        connection already waits for an answer (a closed loop, such as a load test with a
        fixed number of connections), where waiting would only hold its clients back."""
        return self.connections is None or self.connections() > self.unanswered

    def _answered(self, count: int, _fut: asyncio.Future[bool]) -> None:
        self.unanswered -= count

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        self._flush_soon = False
        if not self._items:
            return
        items, durable, self._items, self._durable = self._items, self._durable, [], None
        assert durable is not None
        durable.add_done_callback(partial(self._answered, len(items)))
        batch = MicroBatch(self.encoder.batch(items), durable, len(items))
        if self.mode == ONLINE:
            self._produce_online(batch)
        else:
            self.spooler.put(batch)

    def _produce_online(self, batch: MicroBatch) -> None:
        loop = self._loop
        assert loop is not None
        batch.sent_at = time.monotonic()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            loop.call_soon_threadsafe(self._on_delivery, batch, err)

        try:
            self.link.producer.produce(self.topic, value=batch.value, on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            log.warning("Kafka client refused a batch (%s); spooling", exc)
            self._enter_spooling()
            self.spooler.put(batch)
            return
        batch.timer = loop.call_later(self.spool_after, self._on_slow_ack, batch)

    def _on_delivery(self, batch: MicroBatch, err: KafkaError | None) -> None:
        metrics.PRODUCE_SECONDS.observe(time.monotonic() - batch.sent_at)
        if batch.timer is not None:
            batch.timer.cancel()
        if err is None:
            self.broker_ok = True
        if batch.outcome is not None:
            # Already handed to the spool after a slow ack: record what librdkafka
            # finally did, so the spool entry is acknowledged or replayed.
            set_once(batch.outcome, err is None)
            if err is None and not batch.answered:  # delivered before the disk write finished
                batch.answered = True
                metrics.ACCEPTED.inc(batch.count)
                resolve(batch, True)
            return
        if batch.answered:
            return
        if err is None:
            batch.answered = True
            metrics.ACCEPTED.inc(batch.count)
            resolve(batch, True)
        else:
            log.warning("Kafka did not take a batch (%s); spooling", err)
            self._enter_spooling()
            self.spooler.put(batch)

    def _on_slow_ack(self, batch: MicroBatch) -> None:
        if batch.answered:
            return
        assert self._loop is not None
        log.warning("no Kafka acknowledgement within %.0f ms; spooling", self.spool_after * 1000)
        self._enter_spooling()
        batch.outcome = self._loop.create_future()
        self.spooler.put(batch)

    # --- the modes ---------------------------------------------------------------

    @property
    def online(self) -> bool:
        return self.mode == ONLINE

    def _enter_spooling(self) -> None:
        self.broker_ok = False
        if self.mode != SPOOLING:
            self.mode = SPOOLING
            self._wake.set()

    def drained(self) -> bool:
        """The replay found the spool empty: online again, unless batches still wait for the disk."""
        if not self.spooler.idle:
            return False
        self.mode = ONLINE
        self.spooler.in_flight.clear()
        self.broker_ok = True
        log.info("spool drained; forwarding directly again")
        return True

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the broker takes batches, or the spool has room for them."""
        spool = self.spooler.spool
        room = spool is not None and spool.has_room(64 << 10)
        ready = ((self.mode == ONLINE and self.broker_ok) or room) and self.link.fatal_error is None
        return ready, {
            "mode": self.mode,
            "kafka_fatal_error": self.link.fatal_error,
            "spool_batches": spool.pending_count if spool else 0,
            "spool_bytes": spool.size_bytes if spool else 0,
            "spool_has_room": room,
        }
