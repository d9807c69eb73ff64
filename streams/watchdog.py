"""The worker's stall watchdog: a stalled worker must never look healthy.

Every stage reports each input record it finished (`done`), and wraps every wait that
could last (`waiting`: a salt, a state rebuild, an output flush) so a stall can name what
it waits for. `check` compares that with the end offsets of the partitions the worker
holds: a partition with records left to process that has not moved for `stall_seconds`
is a stall. The worker then logs the stuck stage and what it waits for, and exits
non-zero so its supervisor restarts it (a restarted worker rebuilds from the changelog and
replays from the last commit, so nothing is lost or counted twice).

Pure bookkeeping: no Kafka here, so it is tested with a scripted clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field

TP = tuple[str, int]  # (topic, partition)


@dataclass
class Stall:
    stage: str
    topic: str
    partition: int
    lag: int
    seconds: float
    waiting_for: list[str] = field(default_factory=list)

    def describe(self) -> str:
        waits = "; ".join(self.waiting_for) or "no record delivered by the consumer"
        return (f"{self.stage} made no progress on {self.topic}[{self.partition}] for "
                f"{self.seconds:.0f}s with {self.lag} records to go; waiting for: {waits}")


class Watchdog:
    def __init__(self, stall_seconds: float, stages: Mapping[str, str],
                 clock: Callable[[], float] = time.monotonic) -> None:
        """stages: input topic -> the name of the stage that consumes it."""
        self.stall_seconds = stall_seconds
        self.stages = dict(stages)
        self.clock = clock
        self._next: dict[TP, int] = {}  # next offset to process, per partition
        self._moved: dict[TP, float] = {}  # when that partition last moved (or was assigned)
        self._waits: dict[int, tuple[str, float]] = {}  # id -> (what, since or last touch)
        self._wait_ids = iter(range(1 << 62))
        # At the last check, per held partition: (records left, seconds without progress while
        # records were left). The worker's /metrics shows it.
        self.view: dict[TP, tuple[int, float]] = {}
        self._commits: dict[TP, tuple[int | None, float]] = {}  # committed offset, and since when
        # At the last check, per held partition: (records done but not committed, seconds the
        # committed offset has not moved while there were such records).
        self.commit_view: dict[TP, tuple[int, float]] = {}

    # -- reported by the stages ---------------------------------------------------------
    def done(self, topic: str, partition: int, offset: int) -> None:
        tp = (topic, partition)
        if offset + 1 > self._next.get(tp, -1):
            self._next[tp] = offset + 1
            self._moved[tp] = self.clock()

    @contextmanager
    def waiting(self, what: str) -> Iterator[Callable[[], None]]:
        """Mark a wait; the yielded function records that the wait itself made progress."""
        key = next(self._wait_ids)
        self._waits[key] = (what, self.clock())

        def touch() -> None:
            if key in self._waits:
                self._waits[key] = (what, self.clock())

        try:
            yield touch
        finally:
            self._waits.pop(key, None)

    def waits(self) -> list[str]:
        now = self.clock()
        return [f"{what} ({now - since:.0f}s)" for what, since in
                sorted(self._waits.values(), key=lambda w: w[1])]

    def wait_ages(self) -> list[float]:
        """Seconds since each wait in progress began or last made progress."""
        now = self.clock()
        return [now - since for _, since in list(self._waits.values())]

    # -- judged by the worker's timer ---------------------------------------------------
    def assigned(self, tps: list[TP]) -> None:
        now = self.clock()
        for tp in tps:
            self._moved.setdefault(tp, now)  # a new owner gets the full grace period

    def revoked(self, tps: list[TP]) -> None:
        for tp in tps:
            self._next.pop(tp, None)
            self._moved.pop(tp, None)
            self._commits.pop(tp, None)

    def position(self, tp: TP, committed: Mapping[TP, int | None]) -> int:
        """The next offset of tp to process: after the last record done, else the commit."""
        position = self._next.get(tp)
        return position if position is not None else (committed.get(tp) or 0)

    def lag(self, ends: Mapping[TP, int], committed: Mapping[TP, int | None]) -> int:
        return sum(max(0, end - self.position(tp, committed)) for tp, end in ends.items())

    def check(self, ends: Mapping[TP, int], committed: Mapping[TP, int | None]) -> Stall | None:
        """The worst stall among the held partitions, or None.

        ends: end offset of every held partition. committed: the group's committed offset
        (None if never), the starting point of a partition this worker has not processed yet."""
        now = self.clock()
        # Only the partitions held now: `ends` is read before this call, and a rebalance may
        # have revoked some since (revoked() forgot them; judging them would bring back stale
        # entries that a later assignment of the same partition would inherit).
        ends = {tp: end for tp, end in ends.items() if tp in self._moved}
        self.view = {}
        self.commit_view = {}
        for tp, end in ends.items():
            lag = end - self.position(tp, committed)
            self.view[tp] = (max(0, lag), now - self._moved[tp] if lag > 0 else 0.0)
            offset = committed.get(tp)
            last, since = self._commits.get(tp, (None, now))
            if offset != last or tp not in self._commits:
                self._commits[tp] = (offset, since := now)
            # Faust keeps the offset of the last record committed (Kafka's is the next one).
            pending = max(0, self._next[tp] - 1 - (-1 if offset is None else offset)) if tp in self._next else 0
            self.commit_view[tp] = (pending, now - since if pending else 0.0)
        if self.stall_seconds <= 0:
            return None
        worst: Stall | None = None
        busy = [since for _, since in self._waits.values() if now - since < self.stall_seconds]
        for tp, end in ends.items():
            lag = end - self.position(tp, committed)
            idle = now - self._moved[tp]
            if lag <= 0 or idle < self.stall_seconds or busy:
                continue
            if worst is None or idle > worst.seconds:
                worst = Stall(self.stages.get(tp[0], tp[0]), tp[0], tp[1], lag, idle, self.waits())
        return worst
