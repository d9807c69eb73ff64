"""One micro-batch of beacons on its way to Kafka, and the futures of the requests that
wait for it to become durable."""

from __future__ import annotations

import asyncio


class MicroBatch:
    """Its encoded value and the requests waiting on it."""

    __slots__ = ("value", "futures", "count", "sent_at", "timer", "answered", "spool_id", "outcome")

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


def set_once(fut: asyncio.Future[bool], value: bool) -> None:
    if not fut.done():
        fut.set_result(value)


def resolve(futures: list[asyncio.Future[bool]], durable: bool) -> None:
    for fut in futures:
        if not fut.done():
            fut.set_result(durable)
