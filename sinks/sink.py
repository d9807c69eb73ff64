"""`tally sink`: Kafka -> ClickHouse, in batches, offsets committed after the insert.

One consumer reads the five topics the sink stores (pageviews.enriched,
aggregates, product.events, drops, bad-rows). A batch closes at
TALLY_SINK_BATCH_ROWS rows or TALLY_SINK_BATCH_SECONDS, whichever comes
first; when a backlog is already waiting in the consumer, it keeps taking it up
to TALLY_SINK_MAX_INSERT_ROWS (still within the time bound). Then, in this order:

1. the batch's end offsets are written as commit metadata on its start
   offsets (the intent, see batch.py);
2. each table's rows are inserted with a deduplication token derived from the
   offset ranges (pageviews as Avro pass-through, the rest column-oriented);
3. bad rows produced for rejected records are flushed to Kafka;
4. the end offsets are committed.

A crash anywhere before 4 replays the same ranges with the same tokens, so
nothing is lost and nothing is stored twice. While ClickHouse refuses inserts
the sink retries with exponential backoff and jitter, pauses every partition
(memory stays at one batch plus librdkafka's bounded prefetch) and resumes
when an insert succeeds.
"""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
from typing import Any

from clickhouse_connect.driver.client import Client
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from tally.schemas.codec import DecodeError, default_codec
from tally.schemas.reasons import Component
from tally.schemas.records import bad_row
from tally.sinks import topic_ids
from tally.sinks.batch import Batch, intent_metadata, opened_at
from tally.sinks.flow import Flow
from tally.sinks.inserts import UNAVAILABLE, Inserter
from tally.sinks.metrics import (
    BAD_RECORDS,
    BATCH_AGE,
    FLUSH_SECONDS,
    FLUSHES,
    PENDING_MAX,
    RECORD_AGE,
    RECORDS_TAKEN,
)
from tally.sinks.migrate import migrate
from tally.sinks.readservice import ReadService
from tally.sinks.replay import Replay
from tally.sinks.rollups import start as start_rollups
from tally.sinks.tables import BAD_ROW_COLUMNS, MAPPINGS, Rejected, TableMapping
from tally.sinks.warehouse import connect
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from tally.config import Settings
from tally.kafka import consumer_config, producer_config
from tally.topics import BAD_ROWS, sink_group

log = logging.getLogger(__name__)


class Sink:
    """Consume, batch, insert (inserts.py), commit. Flow (flow.py) pauses and resumes the
    consumer and retries; Replay (replay.py) rebuilds an unfinished batch exactly."""

    def __init__(self, settings: Settings, client: Client, stopping: threading.Event | None = None) -> None:
        self.s = settings
        self.codec = default_codec(settings)
        self.by_topic: dict[str, TableMapping] = {settings.topic(m.topic): m for m in MAPPINGS}
        self.bad_topic = settings.topic(BAD_ROWS)
        # A bounded prefetch queue keeps memory flat while inserts are paused.
        self.consumer = Consumer(consumer_config(settings, sink_group(settings),
                                                 **{"queued.max.messages.kbytes": 32768}))
        self.producer = Producer(producer_config(settings))
        self.stopping = stopping or threading.Event()  # set: finish the batch in hand and stop
        self.flow = Flow(self.consumer, self.stopping)
        self.replay = Replay(self.flow)
        self.inserter = Inserter(settings, client, self.codec, self.flow, self._reject)
        self.batch = Batch()
        self.max_rows = max(settings.sink_batch_rows, settings.sink_max_insert_rows)
        self.flushing = False
        self.flushes = 0
        self.ids = topic_ids.TopicIds(topic_ids.Lookup(settings, self.by_topic))
        self.closing = False  # the batch in hand must be inserted before the next record is taken
        self.untaken_since: float | None = None  # records may wait untaken since: the last flush's start, until a consume finds none
        self.ages: dict[str, list] = {}  # table -> [seconds from Kafka timestamp to take, records]

    # --- consuming --------------------------------------------------------------

    def run(self) -> None:
        flow = self.flow
        self.consumer.subscribe(list(self.by_topic), on_assign=self._on_assign, on_revoke=self._on_revoke)
        self.ids.lookup.start()
        try:
            while not self.stopping.is_set():
                self._follow_ids()
                if self._waiting_for_ids():
                    continue
                msgs, flow.stash = flow.stash, []
                if not msgs:  # records left over from the last batch go first
                    msgs = self.consumer.consume(num_messages=2000, timeout=0.1)
                    if not msgs:
                        self.untaken_since = None  # nothing was waiting: the next batch opens when it starts
                for i, msg in enumerate(msgs):
                    if not self._take(msg):
                        flow.stash = msgs[i:]  # taken once the batch in hand is inserted
                        self.closing = True
                        break
                    if self.batch.size >= self.max_rows and not self.replay.active:
                        flow.stash = msgs[i + 1:]  # next batch: the size bound holds
                        break
                if self.batch.size > PENDING_MAX._value.get():
                    PENDING_MAX.set(self.batch.size)
                if self.replay.active:
                    if self.replay.complete() and self.ids.ready:
                        self._finish_replay()
                elif not self.batch.empty and self.ids.ready and (self.closing or self._due()):
                    self.flush()
            if not self.batch.empty and not self.replay.active and self.ids.ready:
                self.flush()  # a clean stop stores what it read (one attempt: stopping is set)
        finally:
            self.ids.lookup.stop()
            self.consumer.close()
            self.producer.flush(10)

    def _waiting_for_ids(self) -> bool:
        """A batch that is complete but must wait for fresh topic ids (topic_ids.py) takes no
        more records meanwhile: wait a moment for the lookup's answer instead."""
        if self.batch.empty or self.ids.ready or self.replay.active:
            return False
        if not self.closing and self.batch.size < self.max_rows:
            return False
        self.ids.lookup.answered.wait(0.1)
        self.ids.lookup.answered.clear()
        return True

    def _due(self) -> bool:
        """Insert now? At TALLY_SINK_BATCH_ROWS rows or TALLY_SINK_BATCH_SECONDS of age. Past
        the row bound, records already waiting in the consumer (a backlog) keep filling the
        batch up to TALLY_SINK_MAX_INSERT_ROWS: without a backlog the batch is inserted at
        once, as before; with one, fewer and larger inserts mean fewer parts for ClickHouse
        to write and merge (measured: 10k-row inserts spent more CPU merging than parsing)."""
        size = self.batch.size
        if size >= self.max_rows or self.batch.age() >= self.s.sink_batch_seconds:
            return True
        if size < self.s.sink_batch_rows:
            return False
        if not self.flow.stash:  # no wait: only what librdkafka has already fetched
            self.flow.stash = self.consumer.consume(num_messages=2000, timeout=0)
        return not self.flow.stash

    def _take(self, msg: Message) -> bool:
        """Add one record to the batch; False: not now, the batch in hand must be inserted first."""
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", msg.error())
            return True
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        key = (topic, partition)
        if key in self.flow.held:
            return True  # fetched before the pause; re-read after the seek
        if self.replay.active:
            if not self.replay.admit(key, offset):
                return True
        elif self.ids.backward(key, offset):  # e.g. the consumer's own reset after a topic was recreated
            if not self.batch.empty:
                return False
            log.info("%s[%d] moved back to offset %d; the next insert waits for fresh topic ids",
                     topic, partition, offset)
            self.ids.moved()
        self.ids.read(key, offset)
        self._add(msg, topic, partition, offset)
        return True

    def _add(self, msg: Message, topic: str, partition: int, offset: int) -> None:
        mapping = self.by_topic[topic]
        kind, ts = msg.timestamp()
        if kind != TIMESTAMP_NOT_AVAILABLE:
            ages = self.ages.setdefault(mapping.table, [0.0, 0])
            ages[0] += time.time() - ts / 1000
            ages[1] += 1
        value = msg.value() or b""
        if self.batch.empty:
            # Records that arrived while the last batch was being inserted have waited since its flush began.
            self.batch.opened = opened_at(time.monotonic(), self.untaken_since, self.s.sink_batch_seconds)
        self.batch.note(topic, partition, offset)
        if mapping.passthrough:
            try:
                pt = self.inserter.passthrough[mapping.table]
                fp, n = pt.add(self.batch.frames.setdefault(mapping.table, {}), value)
                self.batch.raw.setdefault(mapping.table, []).append((fp, topic, partition, offset, value))
                self.batch.size += n
                return
            except DecodeError:
                pass  # not a plain single-block record: the row builder decides
        try:
            rows = mapping.rows(self.codec, value)
        except Rejected as exc:
            self._reject(msg.topic(), partition, offset, value, exc)
            return
        self.batch.add_rows(mapping.table, rows, (topic, partition, offset, value))

    def _reject(self, topic: str, partition: int, offset: int, value: bytes, exc: Rejected) -> None:
        BAD_RECORDS.labels(topic=topic.removeprefix(self.s.topic_prefix), reason=exc.reason).inc()
        log.warning("rejected %s/%d@%d (%s): %s", topic, partition, offset, exc.reason, exc.detail[:300])
        record = bad_row(exc.reason, exc.detail, Component.SINK, topic, partition, offset, value)
        if topic == self.bad_topic:
            # A broken bad row cannot go back to bad-rows (it would loop): store it directly.
            self.batch.add_rows("bad_rows", [[record[c] for c in BAD_ROW_COLUMNS]], (topic, partition, offset, value))
            return
        self.producer.produce(self.bad_topic, value=self.codec.encode("bad_row", record))
        self.producer.poll(0)

    # --- rebalances and the unfinished batch -----------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        # A new assignment starts at the committed offsets (a deleted topic has none left).
        self.flow.assigned(partitions)
        self.ids.forget((tp.topic, tp.partition) for tp in partitions)
        self.ids.moved()
        self.replay.on_assign(consumer, partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.flushing:
            return  # the commit below will fail for lost partitions; their next owner replays them
        self.ids.forget((tp.topic, tp.partition) for tp in partitions)
        if not self.batch.empty and not self.replay.active and self.ids.ready:
            try:
                self.flush()
            except Exception as exc:  # uncommitted: the next owner reads these records again
                log.warning("could not flush before rebalance (%s); the batch will be re-read", exc)
        self.batch = Batch()
        self.closing = False
        self.replay.clear()
        self.flow.held.clear()
        self.flow.stash.clear()

    def _follow_ids(self) -> None:
        """Take in the last answered topic-id lookup; rewind the topics it shows recreated.
        The order keeps topic_ids.py's invariant: the batch in hand is inserted under the ids
        it was read under before a change is adopted, and a rewind is a move backwards."""
        answer = self.ids.pending()
        if answer is None:
            return
        changed = self.ids.changed(answer)
        if not changed:
            self.ids.adopt(answer)
            return
        if self.replay.active:
            return  # the unfinished batch is rebuilt under the ids it was inserted with
        if not self.ids.ready:
            self.ids.adopt(answer)  # the batch in hand was read after a move: these ids are its own
        if not self.batch.empty:
            self.flush()
        self.ids.adopt(answer)
        self.ids.forget(topic_ids.rewind(self.consumer, changed))
        self.ids.moved()

    def _finish_replay(self) -> None:
        self.replay.finish()
        self.flush(replaying=True)
        self.replay.clear()
        self.flow.release_held()

    # --- inserting -----------------------------------------------------------------

    def flush(self, replaying: bool = False) -> None:
        """The intent (end offsets as commit metadata on the start offsets), the inserts,
        the bad rows to Kafka, then the commit: a crash anywhere replays the same ranges."""
        b = self.batch
        if b.empty:
            return
        self.flushing = True
        t0 = time.monotonic()
        BATCH_AGE.inc(t0 - b.opened)
        self.untaken_since = t0
        try:
            self._commit([TopicPartition(t, p, first, metadata=intent_metadata(last))
                          for (t, p), (first, last) in b.ranges.items()])
            t1 = time.monotonic()
            self.inserter.insert(b, self.ids.held)
            self.flow.retry("flush bad rows to Kafka", self._flush_producer)
            if self.s.test_sink_crash_after_insert and not replaying:
                log.warning("test hook: killing the sink between insert and commit")
                os.kill(os.getpid(), signal.SIGKILL)
            t2 = time.monotonic()
            self._commit([TopicPartition(t, p, last + 1, metadata="") for (t, p), (_, last) in b.ranges.items()])
        finally:
            self.flushing = False
        FLUSHES.inc()
        for step, seconds in (("intent", t1 - t0), ("insert", t2 - t1), ("commit", time.monotonic() - t2)):
            FLUSH_SECONDS.labels(step=step).inc(seconds)
        self._count_ages()
        self.closing = False
        self.flushes += 1
        log.debug("inserted %d rows", b.size)
        self.batch = Batch()

    def _count_ages(self) -> None:
        for table, (seconds, n) in self.ages.items():
            RECORD_AGE.labels(table=table).inc(max(seconds, 0.0))
            RECORDS_TAKEN.labels(table=table).inc(n)
        self.ages.clear()

    def _flush_producer(self) -> None:
        left = self.producer.flush(30)
        if left:
            raise KafkaException(f"{left} bad rows not acknowledged by Kafka")

    def _commit(self, offsets: list[TopicPartition]) -> None:
        try:
            self.flow.retry("commit offsets", lambda: self.consumer.commit(offsets=offsets, asynchronous=False),
                            retry_on=KafkaException, attempts=5)
        except KafkaException as exc:
            # Lost partitions after a rebalance: their next owner replays from the last commit.
            log.warning("commit failed (%s); the records will be read again", exc)


def open_warehouse(settings: Settings, stopping: threading.Event) -> Client:
    """Connect and migrate, waiting (backoff with jitter) while a ClickHouse server is unreachable."""
    def before_sleep(state: Any) -> None:
        log.warning("ClickHouse unavailable (%s); retrying in %.1fs",
                    str(state.outcome.exception()).strip()[:300], state.next_action.sleep)

    for attempt in Retrying(wait=wait_exponential_jitter(multiplier=0.5, max=15, jitter=0.5),
                            retry=retry_if_exception_type(UNAVAILABLE), reraise=True,
                            stop=lambda _: stopping.is_set(), before_sleep=before_sleep):
        with attempt:
            client = connect(settings)
            applied = migrate(client, settings)
            if applied:
                log.info("applied migrations: %s", ", ".join(applied))
    return client


def run(settings: Settings) -> None:
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())
    try:
        client = open_warehouse(settings, stopping)
    except UNAVAILABLE:
        if stopping.is_set():
            log.info("stopped before ClickHouse became available")
            return
        raise
    service = ReadService(settings)
    service.start()
    log.info("health and metrics on http://%s:%d%s", settings.query_host, settings.query_port,
             f"; warehouse socket {settings.socket_path}" if settings.embedded_clickhouse else "")
    rollups = start_rollups(settings, lambda: connect(settings))  # its own thread and session
    sink = Sink(settings, client, stopping)
    try:
        sink.run()
    except Exception as exc:
        if not sink.stopping.is_set():
            raise
        log.info("stopped with an uncommitted batch (%s); it is read again at the next start", exc)
    finally:
        rollups.stop()
        service.stop()
