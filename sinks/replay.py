"""An unfinished batch, read again exactly: before inserting, the sink records the batch's
end offsets as commit metadata on its start offsets (batch.py). A sink that took over such
partitions reads up to those ends and no further (later records are held back), so the
rebuilt batch has the same ranges, hence the same deduplication token, and ClickHouse drops
a repeated insert."""

from __future__ import annotations

import logging
import time

from confluent_kafka import Consumer, TopicPartition
from tally.sinks.batch import parse_intent
from tally.sinks.flow import Flow

log = logging.getLogger(__name__)

REPLAY_TIMEOUT = 20.0  # seconds to rebuild an unfinished batch before giving up on exact replay


class Replay:
    def __init__(self, flow: Flow) -> None:
        self.flow = flow
        self.ends: dict[tuple[str, int], int] = {}  # partition -> last offset of the unfinished batch
        self.reached: set[tuple[str, int]] = set()
        self.deadline = 0.0

    @property
    def active(self) -> bool:
        return bool(self.ends)

    def on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.clear()
        for tp in consumer.committed(partitions, timeout=30):
            end = parse_intent(tp.metadata)
            if end is not None and 0 <= tp.offset <= end:
                self.ends[(tp.topic, tp.partition)] = end
        if self.ends:
            self.deadline = time.monotonic() + REPLAY_TIMEOUT
            log.info("replaying an unfinished batch on %d partitions", len(self.ends))

    def admit(self, key: tuple[str, int], offset: int) -> bool:
        """True when the record belongs to the unfinished batch; a later one is held back."""
        end = self.ends.get(key)
        if end is None or offset > end:
            self.flow.hold(key, offset)
            return False
        if offset >= end:
            self.reached.add(key)
        return True

    def complete(self) -> bool:
        """Every range read to its end, or out of time."""
        return self.reached >= set(self.ends) or time.monotonic() > self.deadline

    def finish(self) -> None:
        missing = set(self.ends) - self.reached
        if missing:
            log.warning("replay incomplete on %s after %.0fs; inserting what was read "
                        "(rows may repeat until ReplacingMergeTree merges them)", sorted(missing), REPLAY_TIMEOUT)

    def clear(self) -> None:
        self.ends.clear()
        self.reached.clear()
