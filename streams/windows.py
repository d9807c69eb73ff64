"""Tumbling-window state of one stream partition, made idempotent against replays.

State of partition p = a fold of *deltas*, one delta per applied input batch. A delta names
its input record (source partition, source offset) and carries what the batch adds: per
(site, hour) the event and pageview counts and the distinct visitor ids; per (site, path, day)
the pageview count; per product key the events and workspace ids.

- `apply` skips a delta whose source offset is at or below the highest offset already
  applied for that source partition (the *watermark*). A replayed input record (after a
  crash, a rebalance or a producer retry) therefore changes nothing.
- Every applied delta is also written to the partition's changelog topic (by app.py),
  before the input offset is committed. A new owner of p rebuilds the state by folding
  the changelog through the same `apply`, watermarks included, so a delta written twice
  (by a zombie worker, say) is applied once.
- Aggregates carry `version` = events applied to that window so far. It only grows, and
  equal versions mean equal totals, so re-emitting after recovery is harmless.

Visitor sets are `VisitorSet`s: a sorted numpy uint64 array plus a small Python set of
recent additions merged in when it grows; ~8-10 bytes per visitor per window instead of
~70 for a Python set of ints.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np

HOUR_MS = 3600_000
DAY_MS = 24 * HOUR_MS
MASK64 = (1 << 64) - 1


def hour_start(ms: int) -> int:
    return ms - ms % HOUR_MS


def day_start(ms: int) -> int:
    return ms - ms % DAY_MS


@lru_cache(maxsize=4096)
def month_bounds(ms: int) -> tuple[int, int]:
    import datetime as dt

    d = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    start = dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.UTC)
    return int(start.timestamp() * 1000), int(end.timestamp() * 1000)


class VisitorSet:
    """An exact set of 64-bit ids: a sorted numpy array plus a small Python set of recent
    additions (which may repeat ids of the array). Adding is a set update; the buffer is
    merged into the array when it reaches 1/8 of it, so memory stays ~8-17 bytes per id."""

    __slots__ = ("main", "buf", "_len")

    def __init__(self) -> None:
        self.main = np.empty(0, dtype=np.uint64)
        self.buf: set[int] = set()
        self._len = 0

    def add_many(self, ids: np.ndarray) -> None:
        self.buf.update(ids.tolist())
        self._len = -1
        if len(self.buf) > max(256, len(self.main) >> 3):
            self._merge()

    def _merge(self) -> None:
        merged = np.fromiter(self.buf, dtype=np.uint64, count=len(self.buf))
        self.main = np.union1d(self.main, merged)
        self.buf = set()
        self._len = len(self.main)

    def __len__(self) -> int:
        if self._len < 0:
            if not len(self.main):
                self._len = len(self.buf)
            else:
                extra = np.fromiter(self.buf, dtype=np.uint64, count=len(self.buf))
                pos = np.searchsorted(self.main, extra)
                pos[pos == len(self.main)] = 0
                self._len = len(self.main) + int(np.count_nonzero(self.main[pos] != extra))
        return self._len

    def nbytes(self) -> int:
        # Python set: ~8 bytes/slot * ~2 slots/entry + 32-byte int objects
        return self.main.nbytes + len(self.buf) * 56


@dataclass
class Window:
    events: int = 0  # every event applied: the version
    count: int = 0  # pageviews (web) or events (product)
    visitors: VisitorSet | None = None


@dataclass
class Delta:
    """What one input record adds to a partition's state."""

    source_partition: int
    source_offset: int
    # (site, hour_start) -> (events, pageviews, visitor ids)
    hours: dict[tuple[str, int], tuple[int, int, np.ndarray]] = field(default_factory=dict)
    # (site, path, day_start) -> pageviews
    paths: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # (tenant, family, day_start) -> (events, workspace ids)
    product: dict[tuple[str, str, int], tuple[int, np.ndarray]] = field(default_factory=dict)

    def encode(self) -> bytes:
        """Compact bytes for the changelog: a JSON header and the raw id arrays."""
        arrays: list[np.ndarray] = []
        hours = []
        for (site, start), (events, pvs, ids) in self.hours.items():
            hours.append([site, start, events, pvs, len(ids)])
            arrays.append(ids)
        product = []
        for (tenant, family, start), (events, ids) in self.product.items():
            product.append([tenant, family, start, events, len(ids)])
            arrays.append(ids)
        head = json.dumps({"s": self.source_partition, "o": self.source_offset, "h": hours,
                           "p": [[s, p, d, n] for (s, p, d), n in self.paths.items()],
                           "w": product}, separators=(",", ":")).encode()
        body = b"".join(a.astype(np.uint64).tobytes() for a in arrays)
        return struct.pack(">I", len(head)) + head + body

    @classmethod
    def decode(cls, data: bytes) -> Delta:
        (n,) = struct.unpack_from(">I", data)
        head = json.loads(data[4:4 + n])
        ids = np.frombuffer(data, dtype=np.uint64, offset=4 + n)
        d = cls(head["s"], head["o"])
        at = 0
        for site, start, events, pvs, k in head["h"]:
            d.hours[(site, start)] = (events, pvs, ids[at:at + k])
            at += k
        for tenant, family, start, events, k in head["w"]:
            d.product[(tenant, family, start)] = (events, ids[at:at + k])
            at += k
        for s, p, day, cnt in head["p"]:
            d.paths[(s, p, day)] = cnt
        return d


def pageview_delta(batch: dict[str, Any]) -> Delta:
    """The delta of one decoded pageview_batch record."""
    d = Delta(batch["source_partition"], batch["source_offset"])
    hours: dict[tuple[str, int], list[Any]] = {}
    paths = d.paths
    for pv in batch["items"]:
        ms = _ms(pv["received_at"])
        site = pv["site"]
        is_pv = pv["event"] == "pageview"
        key = (site, ms - ms % HOUR_MS)
        h = hours.get(key)
        if h is None:
            h = hours[key] = [0, 0, set()]
        h[0] += 1
        h[1] += is_pv
        h[2].add(pv["visitor_id"] & MASK64)
        if is_pv:
            pkey = (site, pv["path"], ms - ms % DAY_MS)
            paths[pkey] = paths.get(pkey, 0) + 1
    for key, (events, pvs, ids) in hours.items():
        arr = np.fromiter(ids, dtype=np.uint64, count=len(ids))
        arr.sort()
        d.hours[key] = (events, pvs, arr)
    return d


def _ms(v: Any) -> int:
    return v if isinstance(v, int) else int(v.timestamp() * 1000)


AggKey = tuple[str, str, str, int]  # kind, scope, dimension, window_start


class PartitionState:
    """Window state of one partition of pageviews.enriched (or product.events)."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.watermarks: dict[int, int] = {}
        self.windows: dict[AggKey, Window] = {}
        self.ends: dict[AggKey, int] = {}
        self.dirty: set[AggKey] = set()

    def seen(self, source_partition: int, source_offset: int) -> bool:
        return source_offset <= self.watermarks.get(source_partition, -1)

    def apply(self, d: Delta, open_after_ms: int | None = None) -> bool:
        """Fold one delta in. False (and no change) when it was applied before.
        Windows that ended before open_after_ms are closed: their updates are ignored."""
        if self.seen(d.source_partition, d.source_offset):
            return False
        self.watermarks[d.source_partition] = d.source_offset
        for (site, start), (events, pvs, ids) in d.hours.items():
            day = day_start(start)
            m0, m1 = month_bounds(day)
            for key, end in (((("site_hour", site, "", start)), start + HOUR_MS),
                             ((("site_day", site, "", day)), day + DAY_MS),
                             ((("site_month", site, "", m0)), m1)):
                if open_after_ms is not None and end < open_after_ms:
                    continue
                w = self._window(key, end, with_visitors=True)
                w.events += events
                w.count += pvs
                w.visitors.add_many(ids)  # type: ignore[union-attr]
        for (site, path, day), n in d.paths.items():
            if open_after_ms is not None and day + DAY_MS < open_after_ms:
                continue
            w = self._window(("path_day", site, path, day), day + DAY_MS, with_visitors=False)
            w.events += n
            w.count += n
        for (tenant, family, day), (events, ids) in d.product.items():
            if open_after_ms is not None and day + DAY_MS < open_after_ms:
                continue
            for key in (("product_family_day", tenant, family, day),
                        ("active_workspaces_day", tenant, "", day),
                        ("active_workspaces_day", "*", "", day)):
                w = self._window(key, day + DAY_MS, with_visitors=True)
                w.events += events
                w.count += events
                w.visitors.add_many(ids)  # type: ignore[union-attr]
        return True

    def _window(self, key: AggKey, end: int, with_visitors: bool) -> Window:
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = Window(visitors=VisitorSet() if with_visitors else None)
            self.ends[key] = end
        self.dirty.add(key)
        return w

    def aggregate(self, key: AggKey) -> dict[str, Any]:
        w = self.windows[key]
        kind, scope, dimension, start = key
        return {"kind": kind, "scope": scope, "dimension": dimension, "window_start": start,
                "window_end": self.ends[key], "partition": self.partition, "count": w.count,
                "uniques": len(w.visitors) if w.visitors is not None else 0, "version": w.events}

    def take_dirty(self) -> Iterator[dict[str, Any]]:
        dirty, self.dirty = self.dirty, set()
        for key in sorted(dirty):
            if key in self.windows:
                yield self.aggregate(key)

    def prune(self, closed_before_ms: int) -> int:
        """Forget windows that ended before closed_before_ms (their totals are final)."""
        old = [k for k, end in self.ends.items() if end < closed_before_ms]
        for k in old:
            del self.windows[k], self.ends[k]
            self.dirty.discard(k)
        return len(old)

    def memory_bytes(self) -> int:
        return sum(w.visitors.nbytes() for w in self.windows.values() if w.visitors is not None)


def aggregate_key(agg: dict[str, Any]) -> bytes:
    return "|".join((agg["kind"], agg["scope"], agg["dimension"], str(agg["window_start"]),
                     str(agg["partition"]))).encode()


def pack(deltas: list[Delta]) -> bytes:
    """One changelog record: several deltas (product events are one delta per input record)."""
    out = []
    for d in deltas:
        raw = d.encode()
        out.append(struct.pack(">I", len(raw)) + raw)
    return b"".join(out)


def unpack(data: bytes) -> Iterator[Delta]:
    at = 0
    while at < len(data):
        (n,) = struct.unpack_from(">I", data, at)
        yield Delta.decode(data[at + 4:at + 4 + n])
        at += 4 + n


def fold(partition: int, records: Iterable[bytes], open_after_ms: int | None = None) -> PartitionState:
    state = PartitionState(partition)
    for raw in records:
        for d in unpack(raw):
            state.apply(d, open_after_ms)
    state.dirty = set(state.windows)  # re-emit everything after a recovery
    return state
