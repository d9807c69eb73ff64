"""The stream worker's three stages: each is one object whose `handle(record)` returns the
records to emit.

    BeaconStage   beacons.raw          -> pageviews.enriched (with the batch's window delta
                                          as a header), drops, bad-rows
    WindowStage   pageviews.enriched p -> window state of p; its changelog record
    ProductStage  product.events p     -> product window state of p; its changelog record, bad-rows

They hold no Kafka client: the app (app.py) feeds them records and emits what they return.
The work itself is in pure modules (beacons.py, windows.py, product.py); here are the
lookups that may wait (a salt, a partition's state rebuild), the choice between the
byte-level and the dict path, and the counting for the worker's metrics.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

from tally.schemas.codec import Codec, DecodeError
from tally.schemas.reasons import BadRowReason, Component
from tally.schemas.records import bad_row
from tally.streams import beacons, projection
from tally.streams.avro_bytes import writer_or_none
from tally.streams.metrics import WorkerCounts
from tally.streams.outputs import Out
from tally.streams.product import product_delta
from tally.streams.salts import SaltCache
from tally.streams.state import StateStore, pack, pack_encoded
from tally.streams.windows import Delta, pageview_delta

from tally.clock import epoch_ms
from tally.config import Settings
from tally.topics import BAD_ROWS, BEACONS_RAW, DROPS, PAGEVIEWS_ENRICHED, PRODUCT_EVENTS

log = logging.getLogger(__name__)

# A probe's round trip and ordinary NTP drift stay under this: no correction.
CLOCK_TOLERANCE = timedelta(seconds=5)
DELTA_HEADER = "tally-delta"  # header of a pageview_batch record: its windows.Delta, encoded


@dataclass(frozen=True, slots=True)
class In:
    """One input record, as the stages see it."""

    topic: str
    partition: int
    offset: int
    value: bytes
    headers: Any = None  # [(name, bytes)] or None

    @classmethod
    def of(cls, event: Any) -> In:
        """From a Faust event."""
        m = event.message
        return cls(m.topic, m.partition, m.offset, event.value, m.headers)


class Clock:
    """The worker's clock (shifted by TALLY_CLOCK_OFFSET_SECONDS) and its lateness bound.

    Never ahead of the broker's: a host clock that runs ahead would otherwise make current
    events too_late (bad rows), close open windows and forget the event ids of the dedup
    window. `agree` takes the broker's time (a probe record's LogAppendTime, see app.py) and
    holds this clock back by however far it ran ahead; a clock behind the broker's is kept
    (it only keeps windows open longer)."""

    def __init__(self, settings: Settings) -> None:
        self.offset = timedelta(seconds=settings.clock_offset_seconds)
        # An event older than this is too late: its windows are closed and its salt may be gone.
        self.lateness_ms = min(settings.allowed_lateness_hours, settings.salt_grace_hours) * 3600_000
        self.dedup_ms = min(settings.dedup_window_seconds * 1000, self.lateness_ms)
        self.ahead = timedelta(0)  # how far the host clock ran ahead of the broker's, last seen

    def local(self) -> datetime:
        """The host's clock (with the test offset), not held back."""
        return datetime.now(UTC) + self.offset

    def now(self) -> datetime:
        return self.local() - self.ahead

    def agree(self, local: datetime, broker: datetime | None) -> None:
        """local: this clock's `local()` read just before the broker stamped `broker` (None:
        no reading; the last correction stays). Ahead by more than CLOCK_TOLERANCE: held back."""
        if broker is None:
            return
        ahead = local - broker
        was, self.ahead = self.ahead, ahead if ahead > CLOCK_TOLERANCE else timedelta(0)
        if self.ahead:
            log.warning("this host's clock runs %.0fs ahead of the broker's: the worker uses the broker's "
                        "(lateness, windows, dedup window and salts)", self.ahead.total_seconds())
        elif was:
            log.info("this host's clock agrees with the broker's again")

    def ms(self) -> int:
        return epoch_ms(self.now())

    def open_after_ms(self) -> int:
        """Windows that ended before this are closed: late updates to them are ignored."""
        return self.ms() - self.lateness_ms

    def remember_after_ms(self) -> int:
        """Event ids of events before this are forgotten (TALLY_DEDUP_WINDOW_SECONDS)."""
        return self.ms() - self.dedup_ms


def load_spam_list(settings: Settings) -> frozenset[str]:
    if not settings.referrer_spam_file:
        return frozenset()
    lines = Path(settings.referrer_spam_file).read_text().splitlines()
    return frozenset(x.strip().lower() for x in lines if x.strip() and not x.startswith("#"))


def delta_header(headers: Any) -> bytes | None:
    for k, v in headers or ():
        if k == DELTA_HEADER:
            return v
    return None


class Stage:
    """What every stage has: its name and input topic, the codec, the clock, the counts, and
    the way to bad-rows."""

    name: str
    input: str  # the input topic, without the prefix

    def __init__(self, settings: Settings, codec: Codec, clock: Clock, counts: WorkerCounts) -> None:
        self.codec, self.clock, self.counts = codec, clock, counts
        self.topic = settings.topic(self.input)
        self.bad_rows = settings.topic(BAD_ROWS)

    async def handle(self, rec: In) -> list[Out]:
        raise NotImplementedError

    def _bad(self, row: dict[str, Any]) -> Out:
        self.counts.bad_rows[row["reason"]] += 1
        return Out(self.bad_rows, self.codec.encode("bad_row", row))


class BeaconStage(Stage):
    """Stage 1 (streams/beacons.py): decode, the steps, salt + hash, enrich, route."""

    name, input = "stage1-beacons", BEACONS_RAW

    def __init__(self, settings: Settings, codec: Codec, clock: Clock, salts: SaltCache,
                 counts: WorkerCounts) -> None:
        super().__init__(settings, codec, clock, counts)
        self.salts = salts
        self.enriched, self.drops = settings.topic(PAGEVIEWS_ENRICHED), settings.topic(DROPS)
        self.cfg = beacons.Stage1Config(
            partitions=settings.topic_partitions, salt_period=settings.salt_period, lateness_ms=clock.lateness_ms,
            keep_user_agent=settings.keep_user_agent, spam=load_spam_list(settings), raw_topic=self.topic,
            drop_empty_ua=settings.drop_empty_ua,
            session_timeout_ms=settings.session_timeout_seconds * 1000)
        # The byte-level path when the schemas have the layouts it knows; else dicts.
        self.fast = writer_or_none(lambda c: beacons.FastStage1(c, self.cfg, counts.steps), codec)
        self.read_dicts = projection.reader(codec, "beacon_batch")
        if self.fast is None:
            log.warning("beacon/pageview schemas changed shape: stage 1 uses the slower dict path")

    async def handle(self, rec: In) -> list[Out]:
        self.counts.records[self.name] += 1
        fast = self.fast
        try:
            if fast is not None:
                body, items = fast.read(rec.value)
            else:
                batch = self.read_dicts(rec.value)
        except DecodeError as exc:
            log.warning("bad row: undecodable beacon batch at %d@%d: %s", rec.partition, rec.offset, exc)
            return [self._bad(beacons.undecodable(rec.value, exc, self.cfg, rec.partition, rec.offset))]
        now_ms = self.clock.ms()
        if fast is not None:
            salts = {k: await self.salts.get(k) for k in fast.periods_needed(items, now_ms)}
            out = fast.process(body, items, rec.partition, rec.offset, salts, now_ms)
        else:
            salts = {k: await self.salts.get(k) for k in beacons.periods_needed(batch, self.cfg, now_ms)}
            out = beacons.process_batch(self.codec, batch, rec.partition, rec.offset, salts, self.cfg, now_ms,
                                        self.counts.steps)
        self.counts.accepted[self.name] += out.accepted
        for d in out.drops:
            self.counts.dropped[d["reason"]] += d["count"]
        # The batch's window delta rides along as a header: stage 2 applies it without
        # decoding the pageviews (it decodes them only when the header is missing).
        outputs = [Out(self.enriched, value, p, headers=[(DELTA_HEADER, out.deltas[p])]) for p, value in out.enriched]
        outputs += [Out(self.drops, self.codec.encode("drop_count", d), key=d["site"].encode()) for d in out.drops]
        return outputs + [self._bad(row) for row in out.bad_rows]


class StateStage(Stage):
    """A stage that keeps window state per input partition (rebuilt from its changelog)."""

    def __init__(self, settings: Settings, codec: Codec, clock: Clock, store: StateStore,
                 counts: WorkerCounts) -> None:
        super().__init__(settings, codec, clock, counts)
        self.store = store


class WindowStage(StateStage):
    """Stage 2 (streams/windows.py): partition p's window deltas, applied once each, and
    each event once: an event_id applied before is left out (PartitionState.apply)."""

    name, input = "stage2-windows", PAGEVIEWS_ENRICHED

    def __init__(self, settings: Settings, codec: Codec, clock: Clock, store: StateStore,
                 counts: WorkerCounts) -> None:
        super().__init__(settings, codec, clock, store, counts)
        self.session_timeout_ms = settings.session_timeout_seconds * 1000
        self.salt_period = settings.salt_period

    @cached_property
    def read_pageviews(self) -> Callable[[bytes], dict[str, Any]]:
        """The decoder of a batch that came without its delta header (only stage 2's fields)."""
        fields = projection.PAGEVIEW_FIELDS | (projection.SESSION_FIELDS if self.session_timeout_ms else set())
        return projection.reader(self.codec, "pageview_batch", fields)

    async def handle(self, rec: In) -> list[Out]:
        self.counts.records[self.name] += 1
        st = await self.store.get(rec.partition)
        t0 = time.perf_counter()
        raw = delta_header(rec.headers)
        try:
            delta = Delta.decode(raw) if raw is not None else None
        except Exception:  # a damaged header: the batch itself is the truth
            delta = raw = None
        if delta is None:
            try:
                delta = pageview_delta(self.read_pageviews(rec.value), self.session_timeout_ms, self.salt_period)
            except DecodeError as exc:
                return [self._bad(bad_row(BadRowReason.UNDECODABLE, str(exc), Component.WORKER, rec.topic,
                                          rec.partition, rec.offset, rec.value))]
        if st.seen(delta.source_partition, delta.source_offset):
            return []  # a replay of an input record already counted
        t1 = time.perf_counter()
        applied = st.apply(delta, self.clock.open_after_ms(), self.clock.remember_after_ms())
        steps = self.counts.steps
        steps.add("windows", "decode", t1 - t0, 1)
        steps.add("windows", "apply", time.perf_counter() - t1, 1)
        if applied is not delta:  # events applied before (a replay by the collector): not counted again
            assert applied is not None
            repeated = len(delta.event_ids) - len(applied.event_ids)
            self.counts.repeated["web"] += repeated
            log.info("%d of %d events at %s[%d]@%d were applied before (same event_id): not counted again",
                     repeated, len(delta.event_ids), rec.topic, rec.partition, rec.offset)
            raw = None  # the changelog gets the delta as applied
        # The changelog record is emitted before this input is acknowledged, and Faust's
        # pre-commit flush delivers it first (outputs.py): a committed batch is in the log.
        return [Out(self.store.topic, pack_encoded([raw]) if raw else pack([applied]), rec.partition)]


class ProductStage(StateStage):
    """Product events (streams/product.py): validated again, counted per family and workspace."""

    name, input = "product-windows", PRODUCT_EVENTS

    async def handle(self, rec: In) -> list[Out]:
        self.counts.records[self.name] += 1
        st = await self.store.get(rec.partition)
        if st.seen(rec.partition, rec.offset):
            return []
        t0 = time.perf_counter()
        delta, bad = product_delta(self.codec, rec.value, rec.topic, rec.partition, rec.offset, self.clock.ms(),
                                   self.clock.lateness_ms)
        # An empty delta (a bad event) is still applied: it moves the watermark, so a replay stays a no-op.
        applied = st.apply(delta, self.clock.open_after_ms(), self.clock.remember_after_ms())
        assert applied is not None
        outputs = [Out(self.store.topic, pack([applied]), rec.partition)]
        self.counts.steps.add("product", "validate+apply", time.perf_counter() - t0, 1)
        if bad is not None:
            outputs.append(self._bad(bad))
        elif applied is not delta:  # its event_id was applied before (an SDK sent it again)
            self.counts.repeated["product"] += 1
            log.info("the product event at %s[%d]@%d was applied before (same event_id): not counted again",
                     rec.topic, rec.partition, rec.offset)
        else:
            self.counts.accepted[self.name] += 1
        return outputs
