"""One micro-batch of beacons on its way to Kafka, and the future its requests wait on
until it is durable (one per batch, shared by all its requests)."""

from __future__ import annotations

import asyncio


class MicroBatch:
    """Its encoded value and the requests waiting on it."""

    __slots__ = ("value", "durable", "count", "sent_at", "timer", "answered", "spool_id", "outcome")

    def __init__(self, value: bytes, durable: asyncio.Future[bool], count: int) -> None:
        self.value = value
        self.durable = durable  # what its requests wait on: True once durable
        self.count = count
        self.sent_at = 0.0
        self.timer: asyncio.TimerHandle | None = None
        self.answered = False
        self.spool_id: int | None = None
        # Set while the batch is in librdkafka and in the spool: resolves True when
        # librdkafka delivers it, False when it gives up.
        self.outcome: asyncio.Future[bool] | None = None


def set_once(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def resolve(batch: MicroBatch, durable: bool) -> None:
    """Answer the batch's requests: durable, or not (the broker is away and the spool full)."""
    set_once(batch.durable, durable)
