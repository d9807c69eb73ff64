"""The collector's way through a broker outage: micro-batches made durable on disk (spool.py)
in groups, one fsync per group, on an I/O thread of their own (`Spooler`); and the replay
of what was spooled, in the order it was written, once the broker answers (`Replayer`).

A spooled batch that librdkafka still holds ("in flight", after a slow acknowledgement) is
acknowledged in the spool if librdkafka delivers it, and replayed only if librdkafka fails
it (a non-retriable error): the broker's return does not duplicate it. The replay also
leaves alone every entry younger than the last one the Spooler has settled, since one of
them may be a batch librdkafka still holds.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException
from tally.producers.collector import metrics
from tally.producers.collector.kafka_link import ProducerLink
from tally.producers.collector.microbatch import MicroBatch, resolve, set_once
from tally.producers.collector.spool import Spool, SpoolCorrupt, SpoolLocked, adopt_orphans
from tally.schemas.reasons import DropReason

from tally.config import Settings

log = logging.getLogger(__name__)

REPLAY_WINDOW = 64  # spooled batches produced before waiting for their acks


def spool_root(settings: Settings) -> Path:
    return settings.state_dir / "spool"


class Spooler:
    def __init__(self, settings: Settings, worker_index: int) -> None:
        self.settings = settings
        self.worker_index = worker_index
        self.spool: Spool | None = None
        self.in_flight: dict[int, MicroBatch] = {}  # spool id -> batch still in librdkafka
        # Highest spool id whose batch _write has finished with (registered as in flight,
        # or acknowledged). The replay leaves younger ids alone: one of them may be a batch
        # librdkafka still holds, and sending it again would store it twice.
        self.settled = 0
        self._queue: list[MicroBatch] = []
        self._busy = False
        self._io = ThreadPoolExecutor(max_workers=1, thread_name_prefix="spool")
        self._loop: asyncio.AbstractEventLoop | None = None

    async def open(self) -> Spool:
        self._loop = asyncio.get_running_loop()
        self.spool = await self.run_io(self._open)
        self.settled = max(self.spool.pending_ids(), default=0)  # left by earlier processes
        for reason, n in self.spool.corrupt.items():
            metrics.SPOOL_CORRUPT.labels(reason).inc(n)
        self.gauges()
        return self.spool

    def _open(self) -> Spool:
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
        moved = adopt_orphans(spool, root, spool.corrupt)
        if moved:
            log.info("adopted %d spooled batches left by a previous worker", moved)
        return spool

    async def run_io(self, fn: Callable[..., Any], *args: Any) -> Any:
        assert self._loop is not None
        return await self._loop.run_in_executor(self._io, fn, *args)

    @property
    def idle(self) -> bool:
        """Nothing waits to be written."""
        return not self._busy and not self._queue

    def put(self, batch: MicroBatch) -> None:
        """Write the batch to the spool (with the others that come meanwhile) and answer its
        requests: True once fsync'd, False if the disk refused it."""
        self._queue.append(batch)
        if not self._busy:
            self._busy = True
            asyncio.ensure_future(self._write())

    async def _write(self) -> None:
        assert self.spool is not None
        try:
            while self._queue:
                group, self._queue = self._queue, []
                try:
                    ids = await self.run_io(self.spool.append, [b.value for b in group])
                except OSError as exc:  # disk full, I/O error: not durable, so not accepted
                    log.error("spool write failed: %s", exc)
                    ids = [None] * len(group)
                for batch, spool_id in zip(group, ids, strict=True):
                    if batch.answered:  # delivered by Kafka while waiting for the disk
                        if spool_id is not None:
                            await self.run_io(self.spool.ack, [spool_id])
                        continue
                    batch.answered = True
                    if spool_id is None:
                        resolve(batch, False)
                        continue
                    batch.spool_id = spool_id
                    if batch.outcome is not None and not batch.outcome.done():
                        self.in_flight[spool_id] = batch  # librdkafka still trying
                    metrics.SPOOLED.inc(batch.count)
                    metrics.ACCEPTED.inc(batch.count)
                    resolve(batch, True)
                self.settled = max([self.settled, *(i for i in ids if i is not None)])
                self.gauges()
        finally:
            self._busy = False

    def gauges(self) -> None:
        if self.spool is not None:
            metrics.SPOOL_ENTRIES.set(self.spool.pending_count)
            metrics.SPOOL_BYTES.set(self.spool.size_bytes)

    async def drain(self) -> None:
        """Wait for the writes in progress; acknowledge what librdkafka delivered meanwhile."""
        while not self.idle:
            await asyncio.sleep(0.01)
        # Spooled batches that librdkafka delivered meanwhile must not be replayed next start.
        delivered = [sid for sid, b in self.in_flight.items()
                     if b.outcome is not None and b.outcome.done() and b.outcome.result()]
        if delivered and self.spool is not None:
            await self.run_io(self.spool.ack, delivered)

    async def close(self) -> None:
        if self.spool is not None:
            await self.run_io(self.spool.close)
        self._io.shutdown(wait=True)


class Modes(Protocol):
    """What the replay needs of the forwarder's state machine."""

    online: bool

    def drained(self) -> bool: ...  # the spool is empty: go online; False if batches still wait


class Replayer:
    """Spooled batches back to Kafka, in order, while the forwarder is spooling."""

    def __init__(self, spooler: Spooler, link: ProducerLink, topic: str, modes: Modes, wake: asyncio.Event) -> None:
        self.spooler, self.link, self.topic, self.modes, self.wake = spooler, link, topic, modes, wake

    async def run(self) -> None:
        backoff = 0.2
        while True:
            if self.modes.online:
                self.wake.clear()
                await self.wake.wait()
                continue
            try:
                progress = await self.once()
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
                self.link.producer.list_topics(self.topic, timeout=2)
                return True
            except KafkaException:
                return False

        return await asyncio.get_running_loop().run_in_executor(None, probe)

    async def once(self) -> bool:
        """Deliver spooled batches in order. True when progress was made (or we are online again)."""
        sp = self.spooler
        assert sp.spool is not None
        ids: list[int] = await sp.run_io(sp.spool.pending_ids)
        if not ids:
            return self.modes.drained()
        ids = [i for i in ids if i <= sp.settled]
        if not ids or not await self._broker_reachable():
            return False
        for start in range(0, len(ids), REPLAY_WINDOW):
            window = ids[start:start + REPLAY_WINDOW]
            waits: list[tuple[int, asyncio.Future[bool], bool]] = []
            # Still in librdkafka's queue: wait for it rather than send it twice.
            held = {i: f.outcome for i in window if (f := sp.in_flight.get(i)) is not None and f.outcome is not None}
            to_read = [i for i in window if i not in held]
            payloads = dict(zip(to_read, await sp.run_io(sp.spool.read_many, to_read), strict=True))
            for spool_id in window:
                outcome = held.get(spool_id)
                if outcome is not None:
                    waits.append((spool_id, outcome, True))
                else:
                    waits.append((spool_id, await self._send(spool_id, payloads[spool_id]), False))
            delivered = []
            for spool_id, fut, was_in_flight in waits:
                ok = await fut
                sp.in_flight.pop(spool_id, None)
                if not ok and was_in_flight:  # librdkafka gave up on it: send it ourselves
                    ok = await (await self._replay(spool_id))
                if not ok:
                    break
                delivered.append(spool_id)
            if delivered and sp.settings.test_collector_crash_before_replay_ack:
                log.warning("test hook: killing the collector between Kafka's ack of a replay and the spool's")
                os.kill(os.getpid(), signal.SIGKILL)
            if delivered:
                await sp.run_io(sp.spool.ack, delivered)
                # A batch found damaged was dropped (and counted spool_corrupt), not replayed.
                metrics.REPLAYED.inc(sum(isinstance(payloads.get(i, b""), bytes) for i in delivered))
                sp.gauges()
            if len(delivered) < len(window):
                return False  # the broker went away again; retry from the first undelivered
        return True  # loop again: drained only when pending_ids() comes back empty

    async def _replay(self, spool_id: int) -> asyncio.Future[bool]:
        """Send a spooled batch again, read from the spool."""
        sp = self.spooler
        assert sp.spool is not None
        return await self._send(spool_id, (await sp.run_io(sp.spool.read_many, [spool_id]))[0])

    async def _send(self, spool_id: int, payload: bytes | SpoolCorrupt) -> asyncio.Future[bool]:
        """Produce a spooled batch's payload. A record damaged on disk since it was written is
        dropped, counted as spool_corrupt (a done future: nothing is left to send)."""
        sp = self.spooler
        assert sp.spool is not None
        if isinstance(payload, bytes):
            return self._produce(payload)
        log.error("%s: one batch lost", payload)
        await sp.run_io(sp.spool.drop, spool_id, DropReason.SPOOL_CORRUPT)
        metrics.SPOOL_CORRUPT.labels(DropReason.SPOOL_CORRUPT).inc()
        sp.gauges()
        done: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        done.set_result(True)
        return done

    def _produce(self, value: bytes) -> asyncio.Future[bool]:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[bool] = loop.create_future()

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            loop.call_soon_threadsafe(set_once, fut, err is None)

        try:
            self.link.producer.produce(self.topic, value=value, on_delivery=delivered)
        except (BufferError, KafkaException):
            fut.set_result(False)
        return fut
