"""Exact sets of 64-bit ids for the window state: `VisitorSet` (a window's distinct visitors or
workspaces) and `SeenEvents` (the fingerprints of the events a partition has applied, by
hour: what stage 2 deduplicates by, see windows.PartitionState.apply).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence

import numpy as np

HOUR_MS = 3600_000


class VisitorSet:
    """An exact set of 64-bit ids: a sorted numpy array plus a small Python set of recent
    additions (which may repeat ids of the array). Adding is a set update; the buffer is
    merged into the array when it reaches 1/8 of it, so memory stays ~8-17 bytes per id."""

    __slots__ = ("main", "buf", "_len", "_limit")

    def __init__(self) -> None:
        self.main = np.empty(0, dtype=np.uint64)
        self.buf: set[int] = set()
        self._len = 0
        self._limit = 256  # merge the buffer when it holds more ids than this

    def add_many(self, ids: np.ndarray | Iterable[int]) -> None:
        """Add ids (an array, or any iterable of ints below 2**64: a list is cheapest)."""
        buf = self.buf
        buf.update(ids.tolist() if isinstance(ids, np.ndarray) else ids)
        self._len = -1
        if len(buf) > self._limit:
            self._merge()

    def _merge(self) -> None:
        new = np.fromiter(self.buf, dtype=np.uint64, count=len(self.buf))
        new.sort()  # the buffer is a set: no repeats within it
        main = self.main
        if len(main):
            pos = np.searchsorted(main, new)
            pos[pos == len(main)] = 0
            new = new[main[pos] != new]  # drop ids the array already has
        merged = np.concatenate((main, new))
        # Two sorted runs: the stable sort (timsort) merges them in linear time, where
        # union1d would sort the whole array again.
        merged.sort(kind="stable")
        self.main = merged
        self.buf = set()
        self._len = len(self.main)
        self._limit = max(256, len(self.main) >> 3)

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

    def positions(self, ids: Sequence[int]) -> set[int]:
        """The positions in `ids` of the ids in the set (vectorised: nearly always none)."""
        buf, main = self.buf, self.main
        out: set[int] = set()
        if len(main):
            arr = np.array(ids, dtype=np.uint64)
            pos = np.searchsorted(main, arr)
            pos[pos == len(main)] = 0
            out.update(np.flatnonzero(main[pos] == arr).tolist())
        if not buf.isdisjoint(ids):
            out.update(i for i, x in enumerate(ids) if x in buf)
        return out


class SeenEvents:
    """The event-id fingerprints (tally.ids.fingerprints) a partition has applied, per hour of
    the events' received_at. A repeated event has the same id and the same received_at, so
    it is looked for in one hour only, and an hour is forgotten with its windows (`prune`):
    memory holds the events of the lateness bound, ~8-17 bytes each."""

    __slots__ = ("hours", "count")

    def __init__(self) -> None:
        self.hours: dict[int, VisitorSet] = {}
        self.count = 0  # ids held (each added id is new: repeats are never added)

    def repeats(self, hours: Mapping[int, Sequence[int]], ids: Sequence[int]) -> set[int]:
        """Positions of the ids applied before, or earlier in the list itself. hours: the
        positions of the ids by the hour of their event (`by_hour`)."""
        out: set[int] = set()
        if len(set(ids)) < len(ids):
            first: set[int] = set()
            for i, x in enumerate(ids):
                if x in first:
                    out.add(i)
                first.add(x)
        for hour, pos in hours.items():
            known = self.hours.get(hour)
            if known is not None:
                if len(pos) == len(ids):
                    out.update(known.positions(ids))
                else:
                    out.update(pos[i] for i in known.positions([ids[p] for p in pos]))
        return out

    def add(self, hours: Mapping[int, Sequence[int]], ids: Sequence[int], open_after_ms: int | None = None) -> None:
        """Remember ids (none of them held yet), except those of hours already closed."""
        for hour, pos in hours.items():
            if open_after_ms is not None and hour + HOUR_MS < open_after_ms:
                continue
            known = self.hours.get(hour)
            if known is None:
                known = self.hours[hour] = VisitorSet()
            known.add_many(ids if len(pos) == len(ids) else [ids[p] for p in pos])
            self.count += len(pos)

    def prune(self, closed_before_ms: int) -> None:
        """Forget the hours that ended before closed_before_ms."""
        for hour in [h for h in self.hours if h + HOUR_MS < closed_before_ms]:
            self.count -= len(self.hours.pop(hour))

    def nbytes(self) -> int:
        return sum(known.nbytes() for known in self.hours.values())


def by_hour(times: Sequence[int]) -> dict[int, Sequence[int]]:
    """Positions of the times (ms) by their hour (nearly always one hour: a range, no list)."""
    if not times:
        return {}
    lo, hi = min(times), max(times)
    if lo - lo % HOUR_MS == hi - hi % HOUR_MS:
        return {lo - lo % HOUR_MS: range(len(times))}
    out: dict[int, list[int]] = defaultdict(list)
    for i, t in enumerate(times):
        out[t - t % HOUR_MS].append(i)
    return out
