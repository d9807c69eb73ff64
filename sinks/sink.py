"""`tally sink`: Kafka -> ClickHouse, in batches, offsets committed after the insert.

Batches close at TALLY_SINK_BATCH_ROWS rows or TALLY_SINK_BATCH_SECONDS,
whichever comes first, and are inserted column-oriented.
"""

from __future__ import annotations

import logging
import signal
import threading
import time
from typing import Any

from confluent_kafka import Consumer, KafkaError
from tally.schemas.codec import DecodeError, default_codec
from tally.sinks.migrate import migrate
from tally.sinks.query_server import serve
from tally.sinks.tables import MAPPINGS
from tally.sinks.warehouse import connect

from tally.config import Settings
from tally.kafka import consumer_config

log = logging.getLogger(__name__)


def run(settings: Settings) -> None:
    client = connect(settings)
    applied = migrate(client, settings)
    if applied:
        log.info("applied migrations: %s", ", ".join(applied))
    server = None
    if settings.embedded_clickhouse:
        server = serve(connect(settings, readonly=True), threading.Lock(), settings.query_host, settings.query_port)
        log.info("query endpoint on http://%s:%d", settings.query_host, settings.query_port)

    by_topic = {settings.topic(m.topic): m for m in MAPPINGS}
    consumer = Consumer(consumer_config(settings, f"{settings.app_id}-sink"))
    consumer.subscribe(list(by_topic))
    codec = default_codec()
    stopping = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stopping.set())

    pending: dict[str, list[list[Any]]] = {m.table: [] for m in MAPPINGS}
    count = 0
    opened = time.monotonic()
    try:
        while not stopping.is_set():
            for msg in consumer.consume(num_messages=1000, timeout=0.2):
                if msg.error():
                    if msg.error().code() != KafkaError._PARTITION_EOF:
                        log.warning("consume error: %s", msg.error())
                    continue
                mapping = by_topic[msg.topic()]
                try:
                    rows = list(mapping.rows(codec, msg.value()))
                except DecodeError as exc:
                    log.warning("skipping undecodable record %s/%d@%d: %s",
                                msg.topic(), msg.partition(), msg.offset(), exc)
                    continue
                pending[mapping.table].extend(rows)
                count += len(rows)
            if count and (count >= settings.sink_batch_rows
                          or time.monotonic() - opened >= settings.sink_batch_seconds):
                for mapping in MAPPINGS:
                    rows = pending[mapping.table]
                    if rows:
                        client.insert(mapping.table, rows, column_names=list(mapping.columns))
                consumer.commit(asynchronous=False)
                log.info("inserted %d rows", count)
                pending = {m.table: [] for m in MAPPINGS}
                count = 0
            if not count:
                opened = time.monotonic()
    finally:
        consumer.close()
        if server:
            server.shutdown()
