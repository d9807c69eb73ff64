"""Forwards accepted beacons to Kafka in micro-batches and reports when each is durable.

A request waits for its beacon's batch to be acknowledged (acks=all) before it
is answered, so a 2xx always means durable. Batching (one Kafka record per
flush) keeps the per-beacon cost low for the collector and for the stream.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any

from confluent_kafka import KafkaError, Producer
from tally.schemas.codec import default_codec

from tally.config import Settings
from tally.kafka import producer_config

log = logging.getLogger(__name__)


class ForwardError(RuntimeError):
    """The beacon could not be made durable."""


class Forwarder:
    def __init__(self, settings: Settings, max_batch: int = 500, max_wait: float = 0.002) -> None:
        self.topic = settings.topic("beacons.raw")
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.codec = default_codec()
        self.producer = Producer(producer_config(settings, **{"linger.ms": 1, "message.timeout.ms": 10000}))
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._flush_handle: asyncio.TimerHandle | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)

    def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._poller.start()

    async def close(self) -> None:
        self._flush()
        await asyncio.get_running_loop().run_in_executor(None, self.producer.flush, 10)
        self._stop.set()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.05)

    async def submit(self, beacon: dict[str, Any]) -> None:
        assert self._loop is not None, "Forwarder.start() not called"
        fut: asyncio.Future[None] = self._loop.create_future()
        self._pending.append((beacon, fut))
        if len(self._pending) >= self.max_batch:
            self._flush()
        elif self._flush_handle is None:
            self._flush_handle = self._loop.call_later(self.max_wait, self._flush)
        await fut

    def _flush(self) -> None:
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None
        batch, self._pending = self._pending, []
        if not batch:
            return
        futures = [f for _, f in batch]
        value = self.codec.encode("beacon_batch", {"items": [b for b, _ in batch]})
        loop = self._loop
        assert loop is not None

        def delivered(err: KafkaError | None, _msg: Any) -> None:
            loop.call_soon_threadsafe(_resolve, futures, err)

        try:
            self.producer.produce(self.topic, value=value, on_delivery=delivered)
        except BufferError as exc:
            _resolve(futures, exc)


def _resolve(futures: list[asyncio.Future[None]], err: Any) -> None:
    for fut in futures:
        if fut.done():
            continue
        if err is None:
            fut.set_result(None)
        else:
            fut.set_exception(ForwardError(str(err)))
