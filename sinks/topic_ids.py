"""The Kafka topic id of each topic the sink reads: a UUID the broker gives each incarnation
of a topic. A topic deleted and created again (or a broker that lost its log) starts its
offsets at 0 again under a new id, so the id is part of the deduplication tokens
(batch.py): new records at old offsets never look to ClickHouse like an old insert.

The ids are looked up on a background thread (`Lookup`), every CHECK_SECONDS and at once
when the sink asks: a lookup that reaches a dead broker waits out its request timeout
(10 s) there, never on the sink's loop. The loop takes in the last *answered* lookup
between batches (`TopicIds`); it never waits for one, except that a batch whose ids must
be fresh (below) is held, not inserted, until a fresh answer is in.

The invariant: **no record of a new incarnation is tokenised with the old incarnation's id
at an offset the old incarnation already used.** Why the order below keeps it:
- Under one id, the sink reads each partition forwards, so an insert's ranges never repeat
  an earlier insert's ranges under that id. A batch read only forwards since the held ids
  were adopted is therefore safe under those ids, whatever incarnation its records are
  from. Such a batch is inserted with the held ids even when a newer answer shows a
  change: that answer is adopted right after it, then the changed topics are rewound.
- The sink can only reach an offset again by moving *backwards* on a partition: a rewind
  (below), the consumer's own reset to the beginning, or a new assignment after a
  rebalance or a restart (the committed offsets of a deleted topic are gone). Each is a
  `moved()`: the batch in hand is closed first (inserted under the held ids, or, if it
  already waited for fresh ids, under those), and the next batch is inserted only with
  ids from a lookup *sent after* the move. If no lookup answers for FRESH_WAIT_SECONDS
  after a move (the broker cannot say the ids), the sink goes on with the last answered
  ids rather than stop storing: the invariant then rests on no topic having been
  recreated during that lookup outage.

The consumer does not notice a recreated topic by itself when the new incarnation has
not yet grown past the old read position: it waits there, past records it never read.
So when an answer shows a changed id, the sink reads that topic again from its beginning
(`rewind`): at least once, as on any replay; ReplacingMergeTree and FINAL fold repeats."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicCollection, TopicPartition
from confluent_kafka.admin import AdminClient

from tally.config import Settings

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0  # how often the ids are looked up
RETRY_SECONDS = 1.0  # after a lookup that got no answer
# After a move, the longest wait for a fresh answer: then the last answered ids are used,
# so a broker that cannot say the ids (no controller, say) does not stop the inserts.
FRESH_WAIT_SECONDS = 30.0
TP = tuple[str, int]


@dataclass(frozen=True)
class Answer:
    issued: float  # time.monotonic() when the lookup was sent
    ids: dict[str, str]


class Lookup:
    """A thread that asks the broker for the topics' ids and keeps the last full answer."""

    def __init__(self, settings: Settings, topics: Iterable[str]) -> None:
        # Its own client, with metadata refreshed every second: librdkafka sends DescribeTopics
        # to the controller its metadata names, and a KRaft cluster names any live broker,
        # so with the default 5-minute refresh a dead node stays "the controller" for minutes.
        self.admin = AdminClient({"bootstrap.servers": settings.bootstrap, "socket.timeout.ms": 10000,
                                  "topic.metadata.refresh.interval.ms": 1000, "log_level": 3})
        self.topics = sorted(set(topics))
        self.latest: Answer | None = None  # replaced whole, never mutated: safe to read
        self.answered = threading.Event()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="topic-ids", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    def poke(self) -> None:
        """Look again now (an answer sent before this call does not count as fresh)."""
        self._wake.set()

    def _run(self) -> None:
        failing = False
        while not self._stop.is_set():
            self._wake.clear()
            issued = time.monotonic()
            ids = self.describe()
            if ids is not None:
                self.latest = Answer(issued, ids)
                self.answered.set()
                if failing:
                    log.info("topic ids answered again")
            elif not failing:
                log.warning("no answer for the topic ids; asking again every %.0fs", RETRY_SECONDS)
            failing = ids is None
            self._wake.wait(RETRY_SECONDS if failing else CHECK_SECONDS)

    def describe(self) -> dict[str, str] | None:
        """Every topic's id, or None if the broker did not give them all."""
        try:
            futures = self.admin.describe_topics(TopicCollection(self.topics), request_timeout=10)
            return {topic: str(fut.result(timeout=15).topic_id) for topic, fut in futures.items()}
        except Exception as exc:
            log.debug("describe topics: %s", exc)
            return None


@dataclass
class TopicIds:
    """The ids the sink's inserts use (`held`) and when they must be fresher (see above)."""

    lookup: Lookup
    held: dict[str, str] = field(default_factory=dict)
    # a batch is inserted only with the ids of a lookup sent after this time (None: any)
    fresh_after: float | None = field(default_factory=time.monotonic)
    read_next: dict[TP, int] = field(default_factory=dict)  # per partition, after the last record read
    adopted: Answer | None = None

    @property
    def ready(self) -> bool:
        """May the batch in hand be inserted with the held ids?"""
        if self.fresh_after is None:
            return True
        if self.held and time.monotonic() - self.fresh_after > FRESH_WAIT_SECONDS:
            log.warning("no topic ids looked up in the %.0fs since a move backwards; inserting with "
                        "the last answered ones", FRESH_WAIT_SECONDS)
            self.fresh_after = None
            return True
        return False

    def moved(self) -> None:
        self.fresh_after = time.monotonic()
        self.lookup.poke()

    def backward(self, key: TP, offset: int) -> bool:
        return offset < self.read_next.get(key, -1)

    def read(self, key: TP, offset: int) -> None:
        self.read_next[key] = offset + 1

    def forget(self, keys: Iterable[TP]) -> None:
        for key in keys:
            self.read_next.pop(key, None)

    def pending(self) -> Answer | None:
        """The last answer, if it is new to the loop and may be adopted now."""
        answer = self.lookup.latest
        if answer is None or answer is self.adopted:
            return None
        if self.fresh_after is not None and answer.issued <= self.fresh_after:
            return None  # sent before the move: the batch in hand waits for the next one
        return answer

    def changed(self, answer: Answer) -> set[str]:
        """The topics whose id in the answer differs from the held one."""
        return {t for t, old in self.held.items() if answer.ids.get(t, old) != old}

    def adopt(self, answer: Answer) -> None:
        self.held = {**self.held, **answer.ids}
        self.adopted = answer
        if self.fresh_after is not None and answer.issued > self.fresh_after:
            self.fresh_after = None


def rewind(consumer: Consumer, topics: set[str]) -> list[TP]:
    """Read the assigned partitions of recreated topics from their new beginning."""
    moved = []
    for tp in consumer.assignment():
        if tp.topic in topics:
            log.warning("topic %s was recreated (new topic id): reading partition %d from its beginning",
                        tp.topic, tp.partition)
            consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))
            moved.append((tp.topic, tp.partition))
    return moved
