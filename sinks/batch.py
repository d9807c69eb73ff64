"""One sink batch: the rows per table, the Kafka offset ranges they came from, and
the deduplication token derived from those ranges.

Idempotence rests on two facts:
- An insert carries `insert_deduplication_token` = hash(table, topic ids, offset
  ranges), so inserting the same ranges of the same topics twice stores them once (ClickHouse remembers the
  last `non_replicated_deduplication_window` tokens per table).
- Before inserting, the sink records the batch's end offsets as Kafka commit
  *metadata* on the batch's start offsets (an "intent"). A sink killed between
  insert and commit restarts at those start offsets, reads the intent, and
  rebuilds exactly the same ranges, hence the same token, so the replayed
  insert is dropped by ClickHouse instead of duplicating rows.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from tally.sinks.tables import ItemFrames

INTENT_PREFIX = "tally-sink:v1:end="


def opened_at(now: float, untaken_since: float | None, batch_seconds: float) -> float:
    """When a new batch counts as opened (TALLY_SINK_BATCH_SECONDS runs from there): now; or,
    when its records may have arrived while the previous batch was being inserted, that
    flush's start (untaken_since), but at most half of batch_seconds back, so a slow insert
    cannot shrink the next batches to a few records each while a backlog builds."""
    if untaken_since is None:
        return now
    return min(now, max(untaken_since, now - batch_seconds / 2))


def intent_metadata(last_offset: int) -> str:
    return f"{INTENT_PREFIX}{last_offset}"


def parse_intent(metadata: str | None) -> int | None:
    """The last offset of an uncommitted batch recorded in commit metadata, or None."""
    if not metadata or not metadata.startswith(INTENT_PREFIX):
        return None
    try:
        return int(metadata[len(INTENT_PREFIX):])
    except ValueError:
        return None


def dedup_token(table: str, ranges: dict[tuple[str, int], list[int]], topic_ids: Mapping[str, str] | None = None) -> str:
    """Deterministic token for the rows of `table` from these (topic, partition) ranges of
    these topic incarnations (topic_ids.py): offsets restart at 0 in a recreated topic."""
    ids = topic_ids or {}
    spec = ";".join(f"{t}#{ids.get(t, '')}:{p}:{first}-{last}" for (t, p), (first, last) in sorted(ranges.items()))
    return hashlib.sha256(f"{table}|{spec}".encode()).hexdigest()[:32]


@dataclass
class Batch:
    rows: dict[str, list[list[Any]]] = field(default_factory=dict)
    frames: dict[str, dict[bytes, ItemFrames]] = field(default_factory=dict)
    raw: dict[str, list[tuple[str, int, int, bytes]]] = field(default_factory=dict)  # for the fallback
    # per table, in row order: (topic, partition, offset, value, rows it gave), for the dead letter
    sources: dict[str, list[tuple[str, int, int, bytes, int]]] = field(default_factory=dict)
    ranges: dict[tuple[str, int], list[int]] = field(default_factory=dict)
    size: int = 0  # rows
    opened: float = field(default_factory=time.monotonic)

    def note(self, topic: str, partition: int, offset: int) -> None:
        r = self.ranges.get((topic, partition))
        if r is None:
            self.ranges[(topic, partition)] = [offset, offset]
        else:
            r[0] = min(r[0], offset)
            r[1] = max(r[1], offset)

    def add_rows(self, table: str, rows: list[list[Any]], source: tuple[str, int, int, bytes]) -> None:
        self.rows.setdefault(table, []).extend(rows)
        self.sources.setdefault(table, []).append((*source, len(rows)))
        self.size += len(rows)

    def ranges_of(self, topic: str) -> dict[tuple[str, int], list[int]]:
        return {k: v for k, v in self.ranges.items() if k[0] == topic}

    @property
    def empty(self) -> bool:
        return not self.ranges

    def age(self) -> float:
        return time.monotonic() - self.opened
