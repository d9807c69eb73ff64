"""The SDK's way to the broker: one librdkafka producer (idempotent, acks=all), its bounded
queue, a thread that serves its callbacks, and the counts of what was queued, delivered and
dropped (by reason)."""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Mapping
from itertools import count
from typing import Any

from confluent_kafka import KafkaError, Producer
from tally.schemas.reasons import DropReason, EventProblem

from tally.config import Settings
from tally.kafka import producer_config

log = logging.getLogger("tally.sdk")


def _counted(counter: count) -> int:
    """How many times next() was called on an itertools.count() started at 0."""
    return int(repr(counter)[6:-1])  # "count(N)": the only read-out the C type offers


class Drops:
    """Events dropped, by reason (a DropReason, or the EventProblem of a catalog rejection);
    each reason is logged once, so a broken caller cannot flood the host's logs."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: Counter[DropReason | EventProblem] = Counter()

    def add(self, reason: DropReason | EventProblem, detail: str, n: int = 1) -> None:
        if reason.__class__ is not DropReason and reason.__class__ is not EventProblem:
            raise TypeError(f"expected a DropReason or a catalog EventProblem, got {reason!r}")
        with self._lock:
            first = reason not in self._counts
            self._counts[reason] += n
        if first:
            log.warning("tally sdk dropped an event (%s): %s", reason, detail)

    def by_reason(self) -> dict[str, int]:
        with self._lock:
            return {reason.value: n for reason, n in self._counts.items()}


class Delivery:
    def __init__(self, settings: Settings, topic: str, client_id: str, drops: Drops,
                 producer_overrides: Mapping[str, Any] | None = None) -> None:
        self.topic = topic
        self.queue_events = settings.sdk_queue_events
        self.drop = drops.add
        self._lock = threading.Lock()
        # Events accepted into the queue: next() on a C counter is atomic under the GIL, so
        # the per-event path takes no lock.
        self.queued = count()
        self.failed = 0
        conf = producer_config(settings, **{
            "client.id": client_id,
            "queue.buffering.max.messages": settings.sdk_queue_events,
            "message.timeout.ms": settings.sdk_delivery_timeout_ms,
            # Only failures call back into Python: a callback per delivered event would
            # cost more than the rest of track().
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            # librdkafka's own log lines go to Python logging, under the host app's control
            "logger": logging.getLogger("tally.sdk.kafka"),
            **(producer_overrides or {}),
        })
        self.producer = Producer(conf)
        self.produce = self.producer.produce  # (topic, value, key): what the fast path calls
        self._stop = threading.Event()
        threading.Thread(target=self._poll_loop, name="tally-sdk-poll", daemon=True).start()

    def offer(self, value: bytes, key: str) -> bool | None:
        """True: queued. None: the queue is full. False: dropped (fatal producer error)."""
        try:
            self.produce(self.topic, value, key)
        except BufferError:
            return None
        except Exception as exc:  # KafkaException after a fatal producer error
            return self.produce_failed(exc)
        next(self.queued)
        return True

    def send_when_space(self, value: bytes, key: str, max_block: float) -> bool:
        """The queue was full: wait up to max_block for space, else drop."""
        outcome = None
        deadline = time.monotonic() + max_block
        while outcome is None and (left := deadline - time.monotonic()) > 0:
            self.producer.poll(min(left, 0.01))  # serves callbacks, frees queue space
            outcome = self.offer(value, key)
        if outcome is None:
            self.queue_full()
            return False
        return outcome

    def queue_full(self) -> None:
        self.drop(DropReason.QUEUE_FULL, f"queue of {self.queue_events} events is full")

    def produce_failed(self, exc: Exception) -> bool:
        self.drop(DropReason.DELIVERY_FAILED, str(exc))
        return False

    def counts(self) -> tuple[int, int, int]:
        """(queued, failed, pending)."""
        pending = len(self.producer)
        queued = _counted(self.queued)
        with self._lock:
            return queued, self.failed, pending

    def close(self, timeout: float) -> None:
        """Flush (bounded), then stop; what is still queued is dropped as exit_timeout."""
        left = self.producer.flush(timeout)
        if left:
            self.drop(DropReason.EXIT_TIMEOUT, f"{left} events still queued after {timeout}s", left)
            self.producer.purge()
            self.producer.poll(0)
        self._stop.set()

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self.failed += 1
            # Purged at close() were already counted as exit_timeout.
            if err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
                self.drop(DropReason.DELIVERY_FAILED, str(err))

    def _on_error(self, err: KafkaError) -> None:
        # Broker down, DNS, auth...: librdkafka retries by itself; queued events either get
        # through or time out into delivery_failed.
        log.debug("tally sdk kafka error: %s", err)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self.producer.poll(0.2)
