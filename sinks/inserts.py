"""Inserting one sink batch into ClickHouse: each table's rows with a deduplication token
derived from the batch's offset ranges (batch.py), pageviews as Avro pass-through with a
record-by-record fallback, retried while the warehouse is unreachable."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import InterfaceError, OperationalError
from tally.schemas.codec import Codec
from tally.sinks.avro_load import AvroLoader
from tally.sinks.batch import Batch, dedup_token
from tally.sinks.flow import Flow
from tally.sinks.metrics import INSERT_FAILURES, ROWS
from tally.sinks.tables import MAPPINGS, ItemFrames, Passthrough, Rejected, TableMapping

from tally.config import Settings

log = logging.getLogger(__name__)


class WarehouseUnavailable(RuntimeError):
    """Raised by the outage test hook, as a server that cannot be reached would."""


# Failures that say nothing about the data: wait them out and retry the same insert.
UNAVAILABLE = (WarehouseUnavailable, OperationalError, InterfaceError, OSError)

# (topic, partition, offset, value, rejection) of a record the fallback could not store
Reject = Callable[[str, int, int, bytes, Rejected], None]


class Inserter:
    def __init__(self, settings: Settings, client: Client, codec: Codec, flow: Flow, reject: Reject) -> None:
        self.s = settings
        self.client = client
        self.codec = codec
        self.flow = flow
        self.reject = reject
        self.loader = AvroLoader(client, settings)
        self.passthrough = {m.table: Passthrough(codec, m.schema, m.columns) for m in MAPPINGS if m.passthrough}

    def insert(self, b: Batch) -> None:
        for mapping in MAPPINGS:
            self._table(mapping, b)

    def _table(self, mapping: TableMapping, b: Batch) -> None:
        table = mapping.table
        token = dedup_token(table, b.ranges_of(self.s.topic(mapping.topic)))
        for fp, frames in sorted(b.frames.get(table, {}).items()):
            raw = [r for r in b.raw.get(table, []) if r[0] == fp]
            self._frames(mapping, frames, raw, f"{token}:{fp.hex()}")
        rows = b.rows.get(table)
        if rows:
            self.flow.retry(f"insert into {table}", lambda: self._rows(table, mapping.columns, rows, f"{token}:rows"))

    def _frames(self, mapping: TableMapping, frames: ItemFrames, raw: list[tuple], token: str) -> None:
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
            self.flow.retry(f"insert into {mapping.table}", insert, retry_on=UNAVAILABLE)
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
                self.reject(topic, partition, offset, value, exc)
        if rows:
            self.flow.retry(f"insert into {mapping.table}", lambda: self._rows(mapping.table, mapping.columns, rows, token))

    def _rows(self, table: str, columns: tuple[str, ...], rows: list[list[Any]], token: str) -> None:
        self._check_outage()
        data = [list(col) for col in zip(*rows, strict=True)]
        self.client.insert(table, data, column_names=list(columns), column_oriented=True,
                           settings={"insert_deduplication_token": token})
        ROWS.labels(table=table).inc(len(rows))

    def _check_outage(self) -> None:
        hook = self.s.test_sink_outage_file
        if hook and Path(hook).exists():
            raise WarehouseUnavailable(f"test hook: warehouse unavailable while {hook} exists")
