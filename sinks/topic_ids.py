"""The Kafka topic id of each topic the sink reads: a UUID the broker gives each incarnation
of a topic. A topic deleted and created again (or a broker that lost its log) starts its
offsets at 0 again under a new id, so the id is part of the deduplication tokens
(batch.py): new records at old offsets never look to ClickHouse like an old insert.

The consumer does not notice a recreated topic by itself when the new incarnation has
not yet grown past the old read position: it waits there, past records it never read.
So the sink looks at the ids every CHECK_SECONDS and reads a recreated topic again from
its beginning (`rewind`)."""

from __future__ import annotations

import logging
from collections.abc import Iterable

from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicCollection, TopicPartition

from tally.config import Settings
from tally.topics import admin

log = logging.getLogger(__name__)

CHECK_SECONDS = 5.0


class TopicIds:
    def __init__(self, settings: Settings) -> None:
        self.admin = admin(settings)
        self.ids: dict[str, str] = {}

    def refresh(self, topics: Iterable[str]) -> dict[str, str]:
        """Ask the broker for the topics' ids; the last known id stands in for one it
        cannot give now (the broker away: the topic cannot have been recreated meanwhile
        unless it comes back, and then the next flush asks again)."""
        wanted = sorted(set(topics))
        if not wanted:
            return self.ids
        try:
            futures = self.admin.describe_topics(TopicCollection(wanted), request_timeout=10)
        except Exception as exc:
            log.warning("could not describe topics %s (%s); using the last known ids", wanted, exc)
            return self.ids
        for topic, fut in futures.items():
            try:
                self.ids[topic] = str(fut.result(timeout=15).topic_id)
            except Exception as exc:
                log.warning("no topic id for %s (%s); using the last known one", topic, exc)
        return self.ids

    def recreated(self, topics: Iterable[str]) -> set[str]:
        """The topics whose id changed since the last look."""
        before = dict(self.ids)
        after = self.refresh(topics)
        return {t for t, old in before.items() if after.get(t, old) != old}


def rewind(consumer: Consumer, topics: set[str]) -> None:
    """Read the assigned partitions of recreated topics from their new beginning."""
    for tp in consumer.assignment():
        if tp.topic in topics:
            log.warning("topic %s was recreated (new topic id): reading partition %d from its beginning",
                        tp.topic, tp.partition)
            consumer.seek(TopicPartition(tp.topic, tp.partition, OFFSET_BEGINNING))
