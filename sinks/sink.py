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
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import InterfaceError, OperationalError
from confluent_kafka import Consumer, KafkaError, KafkaException, Message, Producer, TopicPartition
from prometheus_client import Counter, Gauge
from tally.schemas.codec import DecodeError, default_codec
from tally.sinks.avro_load import AvroLoader
from tally.sinks.batch import Batch, dedup_token, intent_metadata, parse_intent
from tally.sinks.migrate import migrate
from tally.sinks.readservice import ReadService
from tally.sinks.rollups import start as start_rollups
from tally.sinks.tables import MAPPINGS, ItemFrames, Passthrough, Rejected, TableMapping
from tally.sinks.warehouse import connect
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

from tally.config import Settings
from tally.kafka import consumer_config, producer_config

log = logging.getLogger(__name__)

REPLAY_TIMEOUT = 20.0  # seconds to rebuild an unfinished batch before giving up on exact replay

ROWS = Counter("tally_sink_rows_total", "Rows inserted into ClickHouse.", ["table"])
BAD_RECORDS = Counter("tally_sink_bad_records_total", "Records the sink rejected (sent to bad-rows).",
                      ["topic", "reason"])
INSERT_FAILURES = Counter("tally_sink_insert_failures_total", "Failed insert attempts (retried).", ["table"])
PAUSED = Gauge("tally_sink_paused", "1 while consumption is paused because ClickHouse refuses inserts.")
PENDING_MAX = Gauge("tally_sink_pending_rows_max", "Most rows ever held in one uninserted batch (the memory bound).")


class WarehouseUnavailable(RuntimeError):
    """Raised by the outage test hook, as a server that cannot be reached would."""


# Failures that say nothing about the data: wait them out and retry the same insert.
UNAVAILABLE = (WarehouseUnavailable, OperationalError, InterfaceError, OSError)


class Sink:
    def __init__(self, settings: Settings, client: Client) -> None:
        self.s = settings
        self.client = client
        self.codec = default_codec()
        self.by_topic: dict[str, TableMapping] = {settings.topic(m.topic): m for m in MAPPINGS}
        self.passthrough = {m.table: Passthrough(self.codec, m.schema, m.columns)
                            for m in MAPPINGS if m.passthrough}
        self.bad_topic = settings.topic("bad-rows")
        # A bounded prefetch queue keeps memory flat while inserts are paused.
        self.consumer = Consumer(consumer_config(settings, f"{settings.app_id}-sink",
                                                 **{"queued.max.messages.kbytes": 32768}))
        self.producer = Producer(producer_config(settings))
        self.loader = AvroLoader(client, settings)
        self.batch = Batch()
        self.max_rows = max(settings.sink_batch_rows, settings.sink_max_insert_rows)
        self.stopping = threading.Event()
        self.replay: dict[tuple[str, int], int] = {}  # partition -> last offset of the unfinished batch
        self.replay_reached: set[tuple[str, int]] = set()
        self.replay_deadline = 0.0
        self.held: dict[tuple[str, int], int] = {}  # paused partitions -> offset to resume from
        self.stash: list[Message] = []
        self.outage_paused = False
        self.flushing = False
        self.flushes = 0

    # --- consuming --------------------------------------------------------------

    def run(self) -> None:
        self.consumer.subscribe(list(self.by_topic), on_assign=self._on_assign, on_revoke=self._on_revoke)
        try:
            while not self.stopping.is_set():
                msgs, self.stash = self.stash, []
                if not msgs:  # records left over from the last batch go first
                    msgs = self.consumer.consume(num_messages=2000, timeout=0.1)
                for i, msg in enumerate(msgs):
                    self._take(msg)
                    if self.batch.size >= self.max_rows and not self.replay:
                        self.stash = msgs[i + 1:]  # next batch: the size bound holds
                        break
                if self.batch.size > PENDING_MAX._value.get():
                    PENDING_MAX.set(self.batch.size)
                if self.replay:
                    if self.replay_reached >= set(self.replay) or time.monotonic() > self.replay_deadline:
                        self._finish_replay()
                elif not self.batch.empty and self._due():
                    self.flush()
            if not self.batch.empty and not self.replay:
                self.flush()  # a clean stop stores what it read (one attempt: stopping is set)
        finally:
            self.consumer.close()
            self.producer.flush(10)

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
        if not self.stash:  # no wait: only what librdkafka has already fetched
            self.stash = self.consumer.consume(num_messages=2000, timeout=0)
        return not self.stash

    def _take(self, msg: Message) -> None:
        if msg.error():
            if msg.error().code() != KafkaError._PARTITION_EOF:
                log.warning("consume error: %s", msg.error())
            return
        topic, partition, offset = msg.topic(), msg.partition(), msg.offset()
        key = (topic, partition)
        if key in self.held:
            return  # fetched before the pause; re-read after the seek
        if self.replay:
            end = self.replay.get(key)
            if end is None or offset > end:
                self._hold(key, offset)
                return
            if offset >= end:
                self.replay_reached.add(key)
        mapping = self.by_topic[topic]
        value = msg.value() or b""
        if self.batch.empty:
            self.batch.opened = time.monotonic()
        self.batch.note(topic, partition, offset)
        if mapping.passthrough:
            try:
                fp, n = self.passthrough[mapping.table].add(self.batch.frames.setdefault(mapping.table, {}), value)
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
        self.batch.rows.setdefault(mapping.table, []).extend(rows)
        self.batch.size += len(rows)

    def _reject(self, topic: str, partition: int, offset: int, value: bytes, exc: Rejected) -> None:
        BAD_RECORDS.labels(topic=topic.removeprefix(self.s.topic_prefix), reason=exc.reason).inc()
        log.warning("rejected %s/%d@%d (%s): %s", topic, partition, offset, exc.reason, exc.detail[:300])
        now = datetime.now(UTC)
        if topic == self.bad_topic:
            # A broken bad row cannot go back to bad-rows (it would loop): store it directly.
            self.batch.rows.setdefault("bad_rows", []).append(
                [now, "sink", exc.reason, exc.detail, topic, partition, offset, value])
            self.batch.size += 1
            return
        record = {"reason": exc.reason, "detail": exc.detail, "component": "sink", "source_topic": topic,
                  "source_partition": partition, "source_offset": offset, "original": value, "failed_at": now}
        self.producer.produce(self.bad_topic, value=self.codec.encode("bad_row", record))
        self.producer.poll(0)

    # --- replaying an unfinished batch ---------------------------------------------

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        self.replay.clear()
        self.replay_reached.clear()
        for tp in consumer.committed(partitions, timeout=30):
            end = parse_intent(tp.metadata)
            if end is not None and 0 <= tp.offset <= end:
                self.replay[(tp.topic, tp.partition)] = end
        if self.replay:
            self.replay_deadline = time.monotonic() + REPLAY_TIMEOUT
            log.info("replaying an unfinished batch on %d partitions", len(self.replay))

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.flushing:
            return  # the commit below will fail for lost partitions; their next owner replays them
        if not self.batch.empty and not self.replay:
            try:
                self.flush()
            except Exception as exc:  # uncommitted: the next owner reads these records again
                log.warning("could not flush before rebalance (%s); the batch will be re-read", exc)
        self.batch = Batch()
        self.replay.clear()
        self.held.clear()
        self.stash.clear()

    def _hold(self, key: tuple[str, int], offset: int) -> None:
        self.held[key] = offset
        self.consumer.pause([TopicPartition(*key)])

    def _finish_replay(self) -> None:
        missing = set(self.replay) - self.replay_reached
        if missing:
            log.warning("replay incomplete on %s after %.0fs; inserting what was read "
                        "(rows may repeat until ReplacingMergeTree merges them)", sorted(missing), REPLAY_TIMEOUT)
        self.flush(replaying=True)
        self.replay.clear()
        self.replay_reached.clear()
        self._release_held()

    def _release_held(self) -> None:
        if not self.held:
            return
        tps = [TopicPartition(t, p, off) for (t, p), off in self.held.items()]
        self.held.clear()
        for tp in tps:
            self.consumer.seek(tp)
        self.consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in tps])

    # --- inserting -----------------------------------------------------------------

    def flush(self, replaying: bool = False) -> None:
        b = self.batch
        if b.empty:
            return
        self.flushing = True
        try:
            self._commit([TopicPartition(t, p, first, metadata=intent_metadata(last))
                          for (t, p), (first, last) in b.ranges.items()])
            for mapping in MAPPINGS:
                self._insert_table(mapping, b)
            self._retry("flush bad rows to Kafka", self._flush_producer)
            if self.s.test_sink_crash_after_insert and not replaying:
                log.warning("test hook: killing the sink between insert and commit")
                os.kill(os.getpid(), signal.SIGKILL)
            self._commit([TopicPartition(t, p, last + 1, metadata="") for (t, p), (_, last) in b.ranges.items()])
        finally:
            self.flushing = False
        self.flushes += 1
        log.debug("inserted %d rows", b.size)
        self.batch = Batch()

    def _insert_table(self, mapping: TableMapping, b: Batch) -> None:
        table = mapping.table
        token = dedup_token(table, b.ranges_of(self.s.topic(mapping.topic)))
        for fp, frames in sorted(b.frames.get(table, {}).items()):
            raw = [r for r in b.raw.get(table, []) if r[0] == fp]
            self._insert_frames(mapping, frames, raw, f"{token}:{fp.hex()}")
        rows = b.rows.get(table)
        if rows:
            self._retry(f"insert into {table}",
                        lambda: self._insert_rows(table, mapping.columns, rows, f"{token}:rows"))

    def _insert_frames(self, mapping: TableMapping, frames: ItemFrames, raw: list[tuple], token: str) -> None:
        """Avro pass-through first; if ClickHouse refuses it, decode record by record so a
        corrupt record goes to bad-rows and the rest is inserted (with the same token)."""
        pt = self.passthrough[mapping.table]

        def insert() -> None:
            self._check_outage()
            # optimize_on_insert=0: otherwise ReplacingMergeTree runs its replacing merge,
            # row by row, over every inserted block (measured: 3x the insert's CPU). Rows
            # that share an event_id are folded by background merges and FINAL, as rows
            # of two different inserts always were.
            self.loader.insert(mapping.table, list(frames.columns), pt.container_parts(frames),
                               {"insert_deduplication_token": token, "optimize_on_insert": 0})

        try:
            # An unreachable warehouse is waited out on this fast path; only a refusal
            # of the data itself (ClickHouse parsed the block and said no) falls back.
            self._retry(f"insert into {mapping.table}", insert, retry_on=UNAVAILABLE)
            ROWS.labels(table=mapping.table).inc(frames.rows)
            return
        except UNAVAILABLE:
            raise  # stopping
        except Exception as exc:
            INSERT_FAILURES.labels(table=mapping.table).inc()
            log.warning("Avro insert of %d rows into %s failed (%s); decoding record by record",
                        frames.rows, mapping.table, str(exc).strip()[:300])
        rows: list[list[Any]] = []
        for _, topic, partition, offset, value in raw:
            try:
                rows.extend(mapping.rows(self.codec, value))
            except Rejected as exc:
                self._reject(topic, partition, offset, value, exc)
        if rows:
            self._retry(f"insert into {mapping.table}",
                        lambda: self._insert_rows(mapping.table, mapping.columns, rows, token))

    def _insert_rows(self, table: str, columns: tuple[str, ...], rows: list[list[Any]], token: str) -> None:
        self._check_outage()
        data = [list(col) for col in zip(*rows, strict=True)]
        self.client.insert(table, data, column_names=list(columns), column_oriented=True,
                           settings={"insert_deduplication_token": token})
        ROWS.labels(table=table).inc(len(rows))

    def _check_outage(self) -> None:
        hook = self.s.test_sink_outage_file
        if hook and Path(hook).exists():
            raise WarehouseUnavailable(f"test hook: warehouse unavailable while {hook} exists")

    def _flush_producer(self) -> None:
        left = self.producer.flush(30)
        if left:
            raise KafkaException(f"{left} bad rows not acknowledged by Kafka")

    def _commit(self, offsets: list[TopicPartition]) -> None:
        try:
            self._retry("commit offsets", lambda: self.consumer.commit(offsets=offsets, asynchronous=False),
                        retry_on=KafkaException, attempts=5)
        except KafkaException as exc:
            # Lost partitions after a rebalance: their next owner replays from the last commit.
            log.warning("commit failed (%s); the records will be read again", exc)

    def _retry(self, what: str, fn: Callable[[], None],
               retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
               attempts: int | None = None) -> None:
        """Run fn until it succeeds: exponential backoff with jitter, consumption paused
        meanwhile. Gives up only when the sink is stopping (or after `attempts`)."""
        def stop(state: Any) -> bool:
            return self.stopping.is_set() or (attempts is not None and state.attempt_number >= attempts)

        def before_sleep(state: Any) -> None:
            INSERT_FAILURES.labels(table=what.removeprefix("insert into ")).inc()
            self._pause_all()
            log.warning("%s failed (attempt %d): %s; retrying in %.1fs", what, state.attempt_number,
                        str(state.outcome.exception()).strip()[:300], state.next_action.sleep)

        for attempt in Retrying(wait=wait_exponential_jitter(initial=0.2, max=15, jitter=0.5),
                                retry=retry_if_exception_type(retry_on), stop=stop, reraise=True,
                                sleep=self._idle, before_sleep=before_sleep):
            with attempt:
                fn()
        self._resume_all()

    def _idle(self, seconds: float) -> None:
        """Wait while keeping the group membership alive (poll); anything fetched
        before the pause took effect is kept for later, not dropped."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            self.stash.extend(self.consumer.consume(num_messages=500, timeout=min(left, 0.5)))

    def _pause_all(self) -> None:
        if not self.outage_paused:
            self.consumer.pause(self.consumer.assignment())
            self.outage_paused = True
            PAUSED.set(1)

    def _resume_all(self) -> None:
        if self.outage_paused:
            self.outage_paused = False
            PAUSED.set(0)
            keep = [tp for tp in self.consumer.assignment() if (tp.topic, tp.partition) not in self.held]
            self.consumer.resume(keep)
            log.info("ClickHouse accepts inserts again; consumption resumed")


def open_warehouse(settings: Settings, stopping: threading.Event) -> Client:
    """Connect and migrate, waiting (backoff with jitter) while a ClickHouse server is unreachable."""
    def before_sleep(state: Any) -> None:
        log.warning("ClickHouse unavailable (%s); retrying in %.1fs",
                    str(state.outcome.exception()).strip()[:300], state.next_action.sleep)

    for attempt in Retrying(wait=wait_exponential_jitter(initial=0.5, max=15, jitter=0.5),
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
    sink = Sink(settings, client)
    sink.stopping = stopping
    try:
        sink.run()
    except Exception as exc:
        if not sink.stopping.is_set():
            raise
        log.info("stopped with an uncommitted batch (%s); it is read again at the next start", exc)
    finally:
        rollups.stop()
        service.stop()
