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
  return does not duplicate it; only if librdkafka gives up
  (message.timeout.ms) is it replayed from the spool.
- **spooling**: new batches go straight to the spool (no point waiting for a
  broker known to be away). A replay task probes the broker and, once it
  answers, produces the spooled batches in the order they were written. When
  the spool is empty, the forwarder is online again. New batches keep going
  to the spool until then, so replay order is acceptance order.

A replayed batch is the same bytes as the original, so every beacon keeps
the event_id minted at acceptance: a duplicate that slips through (a crash
between Kafka's ack and the spool's ACK record) is recognisable downstream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Producer
from tally.producers.collector import metrics
from tally.producers.collector.encode import beacon_encoder
from tally.producers.collector.spool import Spool, SpoolLocked, adopt_orphans
from tally.schemas.codec import default_codec

from tally.config import Settings
from tally.kafka import producer_config
from tally.topics import BEACONS_RAW

log = logging.getLogger(__name__)

ONLINE, SPOOLING = "online", "spooling"
# librdkafka keeps retrying a message this long before failing it. Requests never
# wait for it (they are answered from the spool after TALLY_SPOOL_AFTER_MS); it
# only bounds how long an in-flight batch holds up the replay behind it.
MESSAGE_TIMEOUT_MS = 20000
REPLAY_WINDOW = 64  # spooled batches produced before waiting for their acks


class _Batch:
    """One micro-batch: its encoded value and the requests waiting on it."""

    __slots__ = ("value", "futures", "count", "sent_at", "timer", "answered", "spool_id",
                 "outcome")

    def __init__(self, value: bytes, futures: list[asyncio.Future[bool]]) -> None:
        self.value = value
        self.futures = futures
        self.count = len(futures)
        self.sent_at = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False
        self.spool_id: int | None = None
        # Set while the batch is in librdkafka and in the spool: resolves True when
        # librdkafka delivers it, False when it gives up.
        self.outcome: asyncio.Future[bool] | None = None


def spool_root(settings: Settings) -> Path:
    return settings.state_dir / "spool"


class Forwarder:
    def __init__(self, settings: Settings, worker_index: int = 0, max_batch: int = 500) -> None:
        self.settings = settings
        self.topic = settings.topic(BEACONS_RAW)
        self.max_batch = max_batch
        self.spool_after = settings.spool_after_ms / 1000
        self.worker_index = worker_index
        self.encoder = beacon_encoder(default_codec(settings))
        self.fatal_error: str | None = None
        self._producer_config = producer_config(settings, **{
            "linger.ms": 0, "socket.nagle.disable": True, "message.timeout.ms": MESSAGE_TIMEOUT_MS, "log_level": 3,
            "error_cb": self._on_client_error})
        self.producer = Producer(self._producer_config)
        # Producers replaced after a fatal error: still polled, so the batches they held
        # report their failure (and go to the spool); see _replace_producer().
        self._retired: list[Producer] = []
        self.replaced_producers = 0
        self._polling: Producer | None = None  # the producer the poll thread is polling
        self.spool: Spool | None = None
        self.mode = ONLINE
        self._items: list[Any] = []  # encoded beacons (or dicts: see encode.py) of the next batch
        self._waiting: list[asyncio.Future[bool]] = []  # their requests, in the same order
        self._flush_handle: asyncio.Handle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._spool_queue: list[_Batch] = []
        self._spool_busy = False
        self._in_flight: dict[int, _Batch] = {}  # spool id -> batch still in librdkafka
        self._wake = asyncio.Event()
        self._replayer: asyncio.Task[None] | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)
        self.broker_ok = True

    # --- lifecycle -------------------------------------------------------------

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.spool = await self._run_io(self._open_spool)
        self._update_spool_gauges()
        if self.spool.pending_count:
            log.info("spool holds %d batches from before; replaying", self.spool.pending_count)
            self.mode = SPOOLING
        self._poller.start()
        self._replayer = asyncio.create_task(self._replay_loop())

    def _open_spool(self) -> Spool:
        root = spool_root(self.settings)
        max_bytes = self.settings.spool_max_mb << 20
        index = self.worker_index
        while True:  # the preferred directory may be owned by another collector on this state dir
            spool = Spool(root / f"w{index}", max_bytes)
            try:
                spool.open()
                break
            except SpoolLocked:
                index += 1
        moved = adopt_orphans(spool, root)
        if moved:
            log.info("adopted %d spooled batches left by a previous worker", moved)
        return spool

    async def close(self) -> None:
        self._flush()
        if self._replayer is not None:
            self._replayer.cancel()
        loop = asyncio.get_running_loop()
        # Let in-flight batches finish so their spool entries are acknowledged.
        await loop.run_in_executor(None, self.producer.flush, 5)
        await asyncio.sleep(0.05)  # run the delivery callbacks just scheduled
        while self._spool_busy or self._spool_queue:
            await asyncio.sleep(0.01)
        # Spooled batches that librdkafka delivered meanwhile must not be replayed next start.
        delivered = [sid for sid, b in self._in_flight.items()
                     if b.outcome is not None and b.outcome.done() and b.outcome.result()]
        if delivered and self.spool is not None:
            await self._run_io(self.spool.ack, delivered)
        self._stop.set()
        if self.spool is not None:
            await self._run_io(self.spool.close)
        self._io.shutdown(wait=True)

    def _on_client_error(self, err: KafkaError) -> None:
        # Runs on the poll thread. A fatal error (e.g. the idempotent producer's
        # sequence broke) leaves this producer unusable for good: it is replaced
        # in place (on the event loop) rather than failing the process.
        if err.fatal():
            log.critical("Kafka producer failed for good: %s; replacing it (batches it still "
                         "held go to the spool and are replayed in order)", err.str())
            assert self._loop is not None
            failed = self._polling or self.producer  # the callback comes from that producer's poll()
            self._loop.call_soon_threadsafe(self._replace_producer, failed, err.str())

    def _replace_producer(self, failed: Producer, reason: str) -> None:
        """A new producer instead of one that hit a fatal error.

        The failed producer fails every batch it still holds (librdkafka reports
        them with the fatal error): those go to the spool as on any failed
        delivery. The forwarder enters spooling first, so new batches queue
        behind them on disk, and the replay sends everything in acceptance
        order through the new producer. Only if a new producer cannot be made
        does /readyz turn 503, so the process gets restarted.
        """
        if failed is not self.producer:
            return  # already replaced
        self._enter_spooling()
        try:
            self.producer = Producer(self._producer_config)
        except KafkaException as exc:
            self.fatal_error = f"{reason}; a new producer could not be made: {exc}"
            log.critical("%s", self.fatal_error)
            return
        self._retired.append(failed)
        self.replaced_producers += 1
        self.fatal_error = None
        self._wake.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._polling = self.producer
            self._polling.poll(0.05)
            for retired in self._retired:
                self._polling = retired
                retired.poll(0)

    async def _run_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._io, fn, *args)

    # --- accepting beacons -----------------------------------------------------------

    def submit(self, item: Any) -> asyncio.Future[bool]:
        """A future of the beacon (an item of self.encoder): True once it is durable, False
        if it cannot be (the broker is away and the spool is full)."""
        fut: asyncio.Future[bool] = self._loop.create_future()  # type: ignore[union-attr]
        self._items.append(item)
        self._waiting.append(fut)
        if len(self._items) >= self.max_batch:
            self._flush()
        elif self._flush_handle is None:
            # Flush once the event loop has handled every request that is ready now:
            # under load one loop pass carries many requests, so batches grow with
            # the load by themselves, and no beacon waits on a timer for company.
            self._flush_handle = self._loop.call_soon(self._flush)
        return fut

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        if not self._items:
            return
        items, waiting, self._items, self._waiting = self._items, self._waiting, [], []
        batch = _Batch(self.encoder.batch(items), waiting)
        if self.mode == ONLINE:
            self._produce_online(batch)
        else:
            self._to_spool(batch)

    def _produce_online(self, batch: _Batch) -> None:
        loop = self._loop
        assert loop is not None
        batch.sent_at = time.monotonic()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            loop.call_soon_threadsafe(self._on_delivery, batch, err)

        try:
            self.producer.produce(self.topic, value=batch.value, on_delivery=delivered)
        except (BufferError, KafkaException) as exc:
            log.warning("Kafka client refused a batch (%s); spooling", exc)
            self._enter_spooling()
            self._to_spool(batch)
            return
        batch.timer = loop.call_later(self.spool_after, self._on_slow_ack, batch)

    def _on_delivery(self, batch: _Batch, err: KafkaError | None) -> None:
        metrics.PRODUCE_SECONDS.observe(time.monotonic() - batch.sent_at)
        if batch.timer is not None:
            batch.timer.cancel()
        if err is None:
            self.broker_ok = True
        if batch.outcome is not None:
            # Already handed to the spool after a slow ack: record what librdkafka
            # finally did, so the spool entry is acknowledged or replayed.
            _set_once(batch.outcome, err is None)
            if err is None and not batch.answered:  # delivered before the disk write finished
                batch.answered = True
                metrics.ACCEPTED.inc(batch.count)
                _resolve(batch.futures, True)
            return
        if batch.answered:
            return
        if err is None:
            batch.answered = True
            metrics.ACCEPTED.inc(batch.count)
            _resolve(batch.futures, True)
        else:
            log.warning("Kafka did not take a batch (%s); spooling", err)
            self._enter_spooling()
            self._to_spool(batch)

    def _on_slow_ack(self, batch: _Batch) -> None:
        if batch.answered:
            return
        assert self._loop is not None
        log.warning("no Kafka acknowledgement within %.0f ms; spooling", self.spool_after * 1000)
        self._enter_spooling()
        batch.outcome = self._loop.create_future()
        self._to_spool(batch)

    def _enter_spooling(self) -> None:
        self.broker_ok = False
        if self.mode != SPOOLING:
            self.mode = SPOOLING
            self._wake.set()

    # --- the spool: group commit ---------------------------------------------------

    def _to_spool(self, batch: _Batch) -> None:
        self._spool_queue.append(batch)
        if not self._spool_busy:
            self._spool_busy = True
            asyncio.ensure_future(self._write_spool())

    async def _write_spool(self) -> None:
        assert self.spool is not None
        try:
            while self._spool_queue:
                group, self._spool_queue = self._spool_queue, []
                try:
                    ids = await self._run_io(self.spool.append, [b.value for b in group])
                except OSError as exc:  # disk full, I/O error: not durable, so not accepted
                    log.error("spool write failed: %s", exc)
                    ids = [None] * len(group)
                for batch, spool_id in zip(group, ids, strict=True):
                    if batch.answered:  # delivered by Kafka while waiting for the disk
                        if spool_id is not None:
                            await self._run_io(self.spool.ack, [spool_id])
                        continue
                    batch.answered = True
                    if spool_id is None:
                        _resolve(batch.futures, False)
                        continue
                    batch.spool_id = spool_id
                    if batch.outcome is not None and not batch.outcome.done():
                        self._in_flight[spool_id] = batch  # librdkafka still trying
                    metrics.SPOOLED.inc(batch.count)
                    metrics.ACCEPTED.inc(batch.count)
                    _resolve(batch.futures, True)
                self._update_spool_gauges()
        finally:
            self._spool_busy = False

    def _update_spool_gauges(self) -> None:
        if self.spool is not None:
            metrics.SPOOL_ENTRIES.set(self.spool.pending_count)
            metrics.SPOOL_BYTES.set(self.spool.size_bytes)

    # --- replay -----------------------------------------------------------------

    async def _replay_loop(self) -> None:
        backoff = 0.2
        while True:
            if self.mode == ONLINE:
                self._wake.clear()
                await self._wake.wait()
                continue
            try:
                progress = await self._replay_once()
            except Exception:  # never let the replayer die; it is the only way out of spooling
                log.exception("replay failed")
                progress = False
            if progress:
                backoff = 0.2
                await asyncio.sleep(0)
                continue
            # Blocked (broker away, or nothing to do yet): probe again after a backoff.
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)

    async def _broker_reachable(self) -> bool:
        def probe() -> bool:
            try:
                self.producer.list_topics(self.topic, timeout=2)
                return True
            except KafkaException:
                return False

        assert self._loop is not None
        return await self._loop.run_in_executor(None, probe)

    async def _replay_once(self) -> bool:
        """Deliver spooled batches in order. True when progress was made (or we are online again)."""
        assert self.spool is not None and self._loop is not None
        ids: list[int] = await self._run_io(self.spool.pending_ids)
        if not ids:
            if not self._spool_queue and not self._spool_busy:
                self.mode = ONLINE
                self._in_flight.clear()
                self.broker_ok = True
                log.info("spool drained; forwarding directly again")
                return True
            return False
        if not await self._broker_reachable():
            return False
        for start in range(0, len(ids), REPLAY_WINDOW):
            window = ids[start:start + REPLAY_WINDOW]
            waits: list[tuple[int, asyncio.Future[bool], bool]] = []
            for spool_id in window:
                in_flight = self._in_flight.get(spool_id)
                if in_flight is not None and in_flight.outcome is not None:
                    # Still in librdkafka's queue: wait for it rather than send it twice.
                    waits.append((spool_id, in_flight.outcome, True))
                    continue
                value = await self._run_io(self.spool.read, spool_id)
                waits.append((spool_id, self._produce_replay(value), False))
            delivered = []
            for spool_id, fut, was_in_flight in waits:
                ok = await fut
                self._in_flight.pop(spool_id, None)
                if not ok and was_in_flight:  # librdkafka gave up on it: send it ourselves
                    ok = await self._produce_replay(await self._run_io(self.spool.read, spool_id))
                if not ok:
                    break
                delivered.append(spool_id)
            if delivered:
                await self._run_io(self.spool.ack, delivered)
                metrics.REPLAYED.inc(len(delivered))
                self._update_spool_gauges()
            if len(delivered) < len(window):
                return False  # the broker went away again; retry from the first undelivered
        return True  # loop again: drained only when pending_ids() comes back empty

    def _produce_replay(self, value: bytes) -> asyncio.Future[bool]:
        loop = self._loop
        assert loop is not None
        fut: asyncio.Future[bool] = loop.create_future()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            loop.call_soon_threadsafe(_set_once, fut, err is None)

        try:
            self.producer.produce(self.topic, value=value, on_delivery=delivered)
        except (BufferError, KafkaException):
            fut.set_result(False)
        return fut

    # --- readiness ---------------------------------------------------------------

    def ready(self) -> tuple[bool, dict[str, Any]]:
        """Ready when the broker takes batches, or the spool has room for them."""
        room = self.spool is not None and self.spool.has_room(64 << 10)
        ready = ((self.mode == ONLINE and self.broker_ok) or room) and self.fatal_error is None
        return ready, {
            "mode": self.mode,
            "kafka_fatal_error": self.fatal_error,
            "spool_batches": self.spool.pending_count if self.spool else 0,
            "spool_bytes": self.spool.size_bytes if self.spool else 0,
            "spool_has_room": room,
        }


def _set_once(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def _resolve(futures: list[asyncio.Future[bool]], durable: bool) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(durable)
