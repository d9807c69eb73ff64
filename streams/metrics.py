"""What the stream worker counts about itself, for its Prometheus endpoint (streams/serve.py).

Plain dicts, updated once per input record or step (never per event), so counting costs the
hot path next to nothing; the endpoint reads them when it is scraped.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager


class StepTimes:
    """Seconds spent in each named step of each stage, and the items that entered it."""

    def __init__(self) -> None:
        self.seconds: Counter[tuple[str, str]] = Counter()  # (stage, step) -> seconds
        self.items: Counter[tuple[str, str]] = Counter()  # (stage, step) -> items in

    def add(self, stage: str, step: str, seconds: float, items: int) -> None:
        key = (stage, step)
        self.seconds[key] += seconds
        self.items[key] += items

    @contextmanager
    def timing(self, stage: str, step: str, items: int) -> Iterator[None]:
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.add(stage, step, time.perf_counter() - t0, items)


class WorkerCounts:
    """Per-stage records and events, and what was dropped or rejected, by reason."""

    def __init__(self) -> None:
        self.steps = StepTimes()
        self.records: Counter[str] = Counter()  # stage -> input records handled
        self.accepted: Counter[str] = Counter()  # stage -> events that went on (pageviews, product events)
        self.dropped: Counter[str] = Counter()  # DropReason value -> events
        self.bad_rows: Counter[str] = Counter()  # BadRowReason value -> records sent to bad-rows
        self.repeated: Counter[str] = Counter()  # kind (web, product) -> events left out: event_id applied before
