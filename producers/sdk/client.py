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
below: a record, catalog.check() (record.py), the codec. The producer, its queue and the
counts are in delivery.py. Both give the same verdict and the
same bytes (tests/test_schemas_avro_writer.py).
"""

from __future__ import annotations

import asyncio
import atexit
import functools
import logging
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

from tally.producers.sdk.delivery import Delivery, Drops
from tally.producers.sdk.pieces import EventPieces, Unavailable
from tally.producers.sdk.profiles import ON_PREMISE, Pseudonyms
from tally.producers.sdk.record import Rejection, product_record
from tally.schemas.catalog import CATALOG
from tally.schemas.codec import Codec, default_codec
from tally.schemas.reasons import DropReason

from tally.config import Settings
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
    deprecated: dict[str, int] = field(default_factory=dict)  # deprecated events tracked (still sent), by name

    @property
    def dropped_total(self) -> int:
        return sum(self.dropped.values())


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
        self.drops = Drops()
        self.profile = settings.sdk_profile
        self.pseudonyms: Pseudonyms | None = None
        self._deprecated: Counter[str] = Counter()
        self._before_close: list[Callable[[], None]] = []
        self._closed = False
        self.delivery: Delivery | None = None
        self._fast: EventPieces | None = None
        if self.disabled:
            return
        if self.profile == ON_PREMISE:
            self.pseudonyms = Pseudonyms.for_installation(settings)
        codec = codec or default_codec(settings)
        self._encode = codec.encode
        try:
            self._fast = EventPieces(codec, self.app)
        except Unavailable as exc:  # e.g. a schema registry: every event takes the full path
            log.info("tally sdk: no fast path (%s)", exc)
        self.delivery = d = Delivery(settings, self.topic, f"tally-sdk-{self.app or 'app'}", self.drops,
                                     producer_overrides)
        atexit.register(self.close, settings.sdk_exit_flush_seconds)
        if self._fast is not None:
            # track() becomes the fast path's closure (tally.producers.sdk.pieces): an event
            # of known pieces costs a few look-ups and one produce(); any other event goes to
            # the method below, which judges it in full.
            self.track = functools.update_wrapper(self._fast.compile_track(  # type: ignore[method-assign]
                d.produce, self.topic, d.queued.__next__,
                when_full=lambda value, key: d.send_when_space(value, key, self.max_block),
                failed=d.produce_failed, full=self._track_full), Client.track)
        if self.pseudonyms is not None:
            self.track = functools.update_wrapper(  # type: ignore[method-assign]
                _pseudonymised(self.track, self.pseudonyms), Client.track)

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
        queued, failed, pending = self.delivery.counts() if self.delivery is not None else (0, 0, 0)
        return Stats(queued=queued, delivered=max(0, queued - failed - pending), pending=pending,
                     failed=failed, dropped=self.drops.by_reason(), disabled=self.disabled,
                     deprecated=dict(self._deprecated))

    def before_close(self, hook: Callable[[], None]) -> None:
        """Run hook at close(), before the final flush (the middleware sends its rollups)."""
        self._before_close.append(hook)

    def flush(self, timeout: float = 10.0) -> int:
        """Wait up to timeout for queued events; return how many are still pending."""
        return self.delivery.producer.flush(timeout) if self.delivery is not None else 0

    def close(self, timeout: float = 5.0) -> None:
        """Flush (bounded), then stop. Events still pending are counted as exit_timeout."""
        if self._closed:
            return
        for hook in self._before_close:
            try:
                hook()
            except Exception:  # a hook must not stop the flush
                log.exception("tally sdk: a close hook failed")
        self._closed = True
        if self._fast is not None:
            self._fast.close()  # every track() now takes the full path, which counts it as closed
        if self.delivery is not None:
            self.delivery.close(timeout)
            atexit.unregister(self.close)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def count_drop(self, reason: DropReason, detail: str, n: int = 1) -> None:
        """Count events lost to `reason` (used by the middleware too)."""
        self.drops.add(reason, detail, n)

    # --- the full path -----------------------------------------------------------------

    def _track_full(self, event: str, tenant_id: str, workspace_id: str, actor: Any, subject: Any,
                    metadata: Mapping[str, Any] | None, occurred_at: datetime | int | None) -> bool:
        value = self._full_value(event, tenant_id, workspace_id, actor, subject, metadata, occurred_at)
        if value is None:
            return False
        assert self.delivery is not None
        queued = self.delivery.offer(value, tenant_id)
        if queued is None:  # librdkafka's queue is full: wait for space, within the bound
            return self.delivery.send_when_space(value, tenant_id, self.max_block)
        return queued

    def _full_value(self, event: str, tenant_id: str, workspace_id: str, actor: Any, subject: Any,
                    metadata: Mapping[str, Any] | None, occurred_at: datetime | int | None) -> bytes | None:
        """The full path: build the record, check() it, encode it; teach the fast path."""
        if self.disabled:
            return None
        try:
            record = product_record(event, tenant_id, workspace_id, actor, subject, metadata, occurred_at, self.app)
        except Rejection as exc:
            if self.strict:
                raise RejectedEvent(exc.problem, exc.detail) from None
            self.drops.add(exc.problem, exc.detail)
            return None
        if self._closed:
            self.drops.add(DropReason.CLOSED, "track() after close()")
            return None
        spec = CATALOG[event]
        if spec.status == "deprecated":  # still sent; warned once, counted (Stats.deprecated)
            if event not in self._deprecated:
                log.warning("tally sdk: event %s is deprecated; use %s (docs/events.md)", event, spec.replaced_by)
            self._deprecated[event] += 1
        try:
            value = self._encode("product_event", record)
        except Exception as exc:  # check() passed, so this is a bug; never crash the host
            self.drops.add(DropReason.ENCODE_ERROR, f"{event}: {exc}")
            return None
        if self._fast is not None:
            self._fast.learn(record, actor, subject)
        return value


def _pseudonymised(track: Callable[..., Any], p: Pseudonyms) -> Callable[..., Any]:
    """track() with actor and subject ids replaced by their pseudonyms (on_premise)."""
    actor_of, subject_of = p.actor, p.subject

    def pseudonymised_track(event: str, *, tenant_id: str, workspace_id: str, actor: Any = None,
                            subject: Any = None, metadata: Any = None, occurred_at: Any = None) -> Any:
        return track(event, tenant_id=tenant_id, workspace_id=workspace_id, actor=actor_of(actor),
                     subject=subject_of(subject), metadata=metadata, occurred_at=occurred_at)

    return pseudonymised_track


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
        if c._fast is not None and c.delivery is not None:
            d = c.delivery
            self._track = c._fast.compile_track(d.produce, c.topic, d.queued.__next__, when_full=_Full,
                                                failed=d.produce_failed, full=self._track_full)
        if c.pseudonyms is not None:
            self._track = _pseudonymised(self._track, c.pseudonyms)

    async def track(self, event: str, *, tenant_id: str, workspace_id: str,
                    actor: str | Actor | tuple[str, str] | None = None,
                    subject: Subject | tuple[str, str | None] | None = None,
                    metadata: Mapping[str, Any] | None = None,
                    occurred_at: datetime | int | None = None) -> bool:
        outcome = self._track(event, tenant_id=tenant_id, workspace_id=workspace_id, actor=actor,
                              subject=subject, metadata=metadata, occurred_at=occurred_at)
        if outcome.__class__ is not _Full:
            return outcome
        c = self.sync
        assert c.delivery is not None
        value, key = outcome
        queued = None
        if c.max_block > 0:
            deadline = time.monotonic() + c.max_block
            while queued is None and time.monotonic() < deadline:
                await asyncio.sleep(0.005)  # the poll thread frees space meanwhile
                queued = c.delivery.offer(value, key)
        if queued is None:
            c.delivery.queue_full()
            return False
        return queued

    def _track_full(self, event: str, tenant_id: str, workspace_id: str, actor: Any, subject: Any,
                    metadata: Mapping[str, Any] | None, occurred_at: datetime | int | None) -> bool | _Full:
        c = self.sync
        value = c._full_value(event, tenant_id, workspace_id, actor, subject, metadata, occurred_at)
        if value is None:
            return False
        assert c.delivery is not None
        queued = c.delivery.offer(value, tenant_id)
        return _Full(value, tenant_id) if queued is None else queued

    def stats(self) -> Stats:
        return self.sync.stats()

    async def flush(self, timeout: float = 10.0) -> int:
        return await asyncio.get_running_loop().run_in_executor(None, self.sync.flush, timeout)

    async def aclose(self, timeout: float = 5.0) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.sync.close, timeout)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()
