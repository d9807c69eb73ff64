"""The product SDK: applications publish catalog events to Kafka with `track()`.

    from tally.producers.sdk import Client

    tally = Client()             # settings from TALLY_* (read once)
    tally.track("report.created", tenant_id="t1", workspace_id="w1",
                actor="u_42", subject=("stored_report", "r_9"),
                metadata={"report_type": "permission_posture"})

What it promises the host application:
- **It never crashes or blocks it.** Every event is checked against the catalog
  (tally.schemas.catalog.check) before it leaves the process. In lenient mode
  (the production default) a rejected event is dropped and counted by reason;
  in strict mode (TALLY_SDK_STRICT=1, for tests) track() raises RejectedEvent
  naming the event and the key.
- **Bounded memory and time.** Events wait in librdkafka's queue, bounded by
  TALLY_SDK_QUEUE_EVENTS. When it is full (the broker is slow or down), track()
  waits at most TALLY_SDK_MAX_BLOCK_MS and then drops the event (queue_full).
  An event the broker has not acknowledged within TALLY_SDK_DELIVERY_TIMEOUT_MS
  is dropped too (delivery_failed). Both are counted.
- **Durable, ordered per tenant.** The producer is idempotent with acks=all
  (tally.kafka.producer_config); events are keyed by tenant_id so one tenant's
  events stay in one partition, in order.
- **Flush at exit.** Queued events get TALLY_SDK_EXIT_FLUSH_SECONDS at
  interpreter exit; what is still queued then is counted as exit_timeout.
- **Opt-out.** TALLY_DISABLED=1 makes track() a no-op.

Counters: `client.stats()` (queued, delivered, pending, dropped by reason).

Speed: track() is the closure tally.producers.sdk.pieces compiles. An event made
of pieces the catalog has already judged (tenants, actors, subjects, metadata
pairs) is encoded from cached bytes; a new piece is judged alone by the
catalog's rule for it; anything else (an unknown event, an explicit
occurred_at, datetimes in metadata, odd types) goes through the full path
below: a record, catalog.check(), the codec. Both give the same verdict and the
same bytes (tests/test_schemas_avro_writer.py).
"""

from __future__ import annotations

import atexit
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from itertools import count
from typing import Any, NamedTuple

from confluent_kafka import KafkaError, Producer
from tally.producers.sdk.pieces import EventPieces, Unavailable
from tally.schemas.catalog import CATALOG, check
from tally.schemas.codec import Codec, default_codec
from tally.schemas.reasons import DropReason, EventProblem

from tally.config import Settings
from tally.ids import uuid7
from tally.kafka import producer_config
from tally.topics import PRODUCT_EVENTS

log = logging.getLogger("tally.sdk")



class RejectedEvent(ValueError):
    """Strict mode: the catalog rejected the event. The message names the event and key."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Actor(NamedTuple):
    type: str  # user, service or system
    id: str = ""


class Subject(NamedTuple):
    type: str
    id: str | None = None


@dataclass(frozen=True)
class Stats:
    queued: int          # accepted into the queue
    delivered: int       # acknowledged by the broker (acks=all)
    pending: int         # still queued or in flight
    failed: int          # not delivered in time (also in dropped[delivery_failed])
    dropped: dict[str, int]  # every drop, by reason: a DropReason, or the EventProblem of a catalog rejection
    disabled: bool = False

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


def _millis(value: datetime | int | float) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime (UTC)")
        return int(value.timestamp() * 1000)
    return int(value)


def _counted(counter: count) -> int:
    """How many times next() was called on an itertools.count() started at 0."""
    return int(repr(counter)[6:-1])  # "count(N)": the only read-out the C type offers


class Client:
    """Publishes catalog events. Thread-safe; create one per process and share it."""

    def __init__(self, settings: Settings | None = None, *, app: str | None = None,
                 strict: bool | None = None, codec: Codec | None = None,
                 producer_overrides: Mapping[str, Any] | None = None) -> None:
        self.settings = settings = settings if settings is not None else Settings.from_env()
        self.disabled = settings.disabled
        self.strict = settings.sdk_strict if strict is None else strict
        self.app = settings.sdk_app if app is None else app
        self.topic = settings.topic(PRODUCT_EVENTS)
        self.max_block = settings.sdk_max_block_ms / 1000
        self._lock = threading.Lock()
        # Events accepted into the queue: next() on a C counter is atomic under the
        # GIL, so the per-event path takes no lock.
        self._queued = count()
        self._failed = 0
        self._dropped: Counter[str] = Counter()
        self._closed = False
        self._producer: Producer | None = None
        self._fast: EventPieces | None = None
        if self.disabled:
            return
        codec = codec or default_codec(settings)
        self._encode = codec.encode
        try:
            self._fast = EventPieces(codec, self.app)
        except Unavailable as exc:  # e.g. a schema registry: every event takes the full path
            log.info("tally sdk: no fast path (%s)", exc)
        conf = producer_config(settings, **{
            "client.id": f"tally-sdk-{self.app or 'app'}",
            "queue.buffering.max.messages": settings.sdk_queue_events,
            "message.timeout.ms": settings.sdk_delivery_timeout_ms,
            # Only failures call back into Python: a callback per delivered
            # event would cost more than the rest of track().
            "delivery.report.only.error": True,
            "on_delivery": self._on_delivery,
            "error_cb": self._on_error,
            # librdkafka's own log lines go to Python logging, under the host app's control
            "logger": logging.getLogger("tally.sdk.kafka"),
            **(producer_overrides or {}),
        })
        self._producer = Producer(conf)
        self._produce = self._producer.produce
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll_loop, name="tally-sdk-poll", daemon=True)
        self._poller.start()
        atexit.register(self.close, settings.sdk_exit_flush_seconds)
        if self._fast is not None:
            # track() becomes the fast path's closure (tally.producers.sdk.pieces): an
            # event of known pieces costs a few look-ups and one produce(); any
            # other event goes to the method below, which judges it in full.
            self.track = functools.update_wrapper(self._fast.compile_track(  # type: ignore[method-assign]
                self._produce, self.topic, self._queued.__next__,
                when_full=lambda value, key: self._send_when_space(value, key, self.max_block),
                failed=self._produce_failed, full=self._track_full), Client.track)

    # --- the API ------------------------------------------------------------------

    def track(self, event: str, *, tenant_id: str, workspace_id: str,
              actor: str | Actor | tuple[str, str] | None = None,
              subject: Subject | tuple[str, str | None] | None = None,
              metadata: Mapping[str, Any] | None = None,
              occurred_at: datetime | int | None = None) -> bool:
        """Queue one event. True when it was accepted into the queue.

        actor: a user id (str), an Actor/(type, id) pair, or None for the system.
        subject: a Subject/(type, id) pair, or None. metadata values: ids, enum
        strings, booleans, small ints, and aware datetimes (sent as epoch ms).
        """
        return self._track_full(event, tenant_id, workspace_id, actor, subject, metadata, occurred_at)

    def stats(self) -> Stats:
        pending = len(self._producer) if self._producer is not None else 0
        queued = _counted(self._queued)
        with self._lock:
            failed, dropped = self._failed, {reason.value: n for reason, n in self._dropped.items()}
        return Stats(queued=queued, delivered=max(0, queued - failed - pending), pending=pending,
                     failed=failed, dropped=dropped, disabled=self.disabled)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to timeout for queued events; return how many are still pending."""
        if self._producer is None:
            return 0
        return self._producer.flush(timeout)

    def close(self, timeout: float = 5.0) -> None:
        """Flush (bounded), then stop. Events still pending are counted as exit_timeout."""
        if self._closed:
            return
        self._closed = True
        if self._fast is not None:
            self._fast.close()  # every track() now takes the full path, which counts it as closed
        if self._producer is None:
            return
        left = self._producer.flush(timeout)
        if left:
            self._drop(DropReason.EXIT_TIMEOUT, f"{left} events still queued after {timeout}s", left)
            self._producer.purge()
            self._producer.poll(0)
        self._stop.set()
        atexit.unregister(self.close)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- internals ----------------------------------------------------------------

    def _record(self, event: str, tenant_id: str, workspace_id: str, actor: Any, subject: Any,
                metadata: Mapping[str, Any] | None, occurred_at: datetime | int | None
                ) -> dict[str, Any] | None:
        try:
            if actor is None:
                actor_type, actor_id = "system", ""
            elif isinstance(actor, str):
                actor_type, actor_id = "user", actor
            else:
                actor_type, actor_id = actor
            if subject is None:
                subject_type, subject_id = "", None
            else:
                subject_type, subject_id = subject
            spec = CATALOG.get(event)
            now = time.time_ns() // 1_000_000
            record = {
                "event_id": uuid7(now),
                "event": event,
                "feature_area": spec.feature_area if spec is not None else None,
                "tenant_id": tenant_id,
                "workspace_id": workspace_id,
                "actor_type": actor_type,
                "actor_id": actor_id,
                "subject_type": subject_type,
                "subject_id": subject_id,
                "occurred_at": now if occurred_at is None else _millis(occurred_at),
                "app": self.app,
                "metadata": metadata or {},
            }
        except (TypeError, ValueError) as exc:
            return self._reject(EventProblem.BAD_TYPE, f"{event!r}: {exc}")
        bad = check(record)
        if (bad is not None and isinstance(metadata, Mapping)
                and any(isinstance(v, datetime) for v in metadata.values())):
            # Aware datetimes are sent as epoch ms; converted only when present, so
            # the common call pays nothing for it.
            try:
                record["metadata"] = {k: _millis(v) if isinstance(v, datetime) else v
                                      for k, v in metadata.items()}
            except ValueError as exc:
                return self._reject(EventProblem.BAD_TYPE, f"{event}: {exc}")
            bad = check(record)
        if bad is not None:
            return self._reject(*bad)
        return record

    def _reject(self, reason: EventProblem, detail: str) -> None:
        if self.strict:
            raise RejectedEvent(reason, detail)
        self._drop(reason, detail)
        return None

    def _send_when_space(self, value: bytes, key: str, max_block: float) -> bool:
        """The queue was full: wait up to max_block for space, else drop."""
        outcome = None
        deadline = time.monotonic() + max_block
        while outcome is None and (left := deadline - time.monotonic()) > 0:
            self._producer.poll(min(left, 0.01))  # serves callbacks, frees queue space
            outcome = self._offer(value, key)
        if outcome is None:
            self._drop(DropReason.QUEUE_FULL, f"queue of {self.settings.sdk_queue_events} events is full")
            return False
        return outcome

    def _track_full(self, event: str, tenant_id: str, workspace_id: str, actor: Any, subject: Any,
                    metadata: Mapping[str, Any] | None, occurred_at: datetime | int | None) -> bool:
        value = self._full_value(event, tenant_id, workspace_id, actor, subject, metadata, occurred_at)
        if value is None:
            return False
        queued = self._offer(value, tenant_id)
        if queued is None:  # librdkafka's queue is full: wait for space, within the bound
            return self._send_when_space(value, tenant_id, self.max_block)
        return queued

    def _full_value(self, event: str, tenant_id: str, workspace_id: str, actor: Any, subject: Any,
                    metadata: Mapping[str, Any] | None, occurred_at: datetime | int | None) -> bytes | None:
        """The full path: build the record, check() it, encode it; teach the fast path."""
        if self.disabled:
            return None
        record = self._record(event, tenant_id, workspace_id, actor, subject, metadata, occurred_at)
        if record is None:
            return None
        if self._closed:
            self._drop(DropReason.CLOSED, "track() after close()")
            return None
        try:
            value = self._encode("product_event", record)
        except Exception as exc:  # check() passed, so this is a bug; never crash the host
            self._drop(DropReason.ENCODE_ERROR, f"{event}: {exc}")
            return None
        fast = self._fast
        if fast is not None:
            fast.learn(record, actor, subject)
        return value

    def _offer(self, value: bytes, key: str) -> bool | None:
        """True: queued. None: the queue is full. False: dropped (fatal producer error)."""
        try:
            self._produce(self.topic, value, key)
        except BufferError:
            return None
        except Exception as exc:  # KafkaException after a fatal producer error
            return self._produce_failed(exc)
        next(self._queued)
        return True

    def _produce_failed(self, exc: Exception) -> bool:
        self._drop(DropReason.DELIVERY_FAILED, str(exc))
        return False

    def count_drop(self, reason: DropReason, detail: str, n: int = 1) -> None:
        """Count events lost to `reason` (used by the middleware too)."""
        self._drop(reason, detail, n)

    def _drop(self, reason: DropReason | EventProblem, detail: str, n: int = 1) -> None:
        if reason.__class__ is not DropReason and reason.__class__ is not EventProblem:
            raise TypeError(f"expected a DropReason or a catalog EventProblem, got {reason!r}")
        with self._lock:
            first = reason not in self._dropped
            self._dropped[reason] += n
        if first:  # log a reason once, not once per event: a broken caller must not flood logs
            log.warning("tally sdk dropped an event (%s): %s", reason, detail)

    def _on_delivery(self, err: KafkaError | None, msg: Any) -> None:
        if err is not None:
            with self._lock:
                self._failed += 1
            # Purged at close() were already counted as exit_timeout.
            if err.code() not in (KafkaError._PURGE_QUEUE, KafkaError._PURGE_INFLIGHT):
                self._drop(DropReason.DELIVERY_FAILED, str(err))

    def _on_error(self, err: KafkaError) -> None:
        # Broker down, DNS, auth...: librdkafka retries by itself; queued events
        # either get through or time out into delivery_failed.
        log.debug("tally sdk kafka error: %s", err)

    def _poll_loop(self) -> None:
        while not self._stop.is_set():
            self._producer.poll(0.2)


class _Full(NamedTuple):
    """An event the queue had no room for (async flavour: it waits without blocking)."""

    value: bytes
    key: str


class AsyncClient:
    """asyncio flavour: the same client; `await track(...)` never blocks the loop.

    When the queue is full it yields to the loop (asyncio.sleep) instead of
    blocking, for at most TALLY_SDK_MAX_BLOCK_MS.
    """

    def __init__(self, settings: Settings | None = None, **kwargs: Any) -> None:
        self.sync = c = Client(settings, **kwargs)
        # The same fast path as the sync client, except that a full queue hands the
        # event back (_Full) so track() can wait for space without blocking the loop.
        self._track: Callable[..., bool | _Full] = self._track_full
        if c._fast is not None:
            self._track = c._fast.compile_track(
                c._produce, c.topic, c._queued.__next__, when_full=_Full, failed=c._produce_failed,
                full=self._track_full)

    async def track(self, event: str, *, tenant_id: str, workspace_id: str,
                    actor: str | Actor | tuple[str, str] | None = None,
                    subject: Subject | tuple[str, str | None] | None = None,
                    metadata: Mapping[str, Any] | None = None,
                    occurred_at: datetime | int | None = None) -> bool:
        import asyncio

        outcome = self._track(event, tenant_id=tenant_id, workspace_id=workspace_id, actor=actor,
                              subject=subject, metadata=metadata, occurred_at=occurred_at)
        if outcome.__class__ is not _Full:
            return outcome
        c = self.sync
        value, key = outcome
        queued = None
        if c.max_block > 0:
            deadline = time.monotonic() + c.max_block
            while queued is None and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # the poll thread frees space meanwhile
                queued = c._offer(value, key)
        if queued is None:
            c._drop(DropReason.QUEUE_FULL, f"queue of {c.settings.sdk_queue_events} events is full")
            return False
        return queued

    def _track_full(self, event: str, tenant_id: str, workspace_id: str, actor: Any, subject: Any,
                    metadata: Mapping[str, Any] | None, occurred_at: datetime | int | None) -> bool | _Full:
        c = self.sync
        value = c._full_value(event, tenant_id, workspace_id, actor, subject, metadata, occurred_at)
        if value is None:
            return False
        queued = c._offer(value, tenant_id)
        return _Full(value, tenant_id) if queued is None else queued

    def stats(self) -> Stats:
        return self.sync.stats()

    async def flush(self, timeout: float = 10.0) -> int:
        import asyncio

        return await asyncio.get_running_loop().run_in_executor(None, self.sync.flush, timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        import asyncio

        await asyncio.get_running_loop().run_in_executor(None, self.sync.close, timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
