"""Inserting one sink batch into ClickHouse: each table's rows with a deduplication token
derived from the batch's offset ranges and topic ids (batch.py, topic_ids.py), pageviews as Avro pass-through with a
record-by-record fallback, retried while the warehouse is unreachable.

An insert ClickHouse *refuses* (it was reached and said no to the data) is retried
REFUSALS times; then the block is split in halves, by source record, until the records
whose rows it refuses are isolated. Those go to bad-rows as `warehouse_refused` (the dead letter)
and the rest is stored, so one bad row never pauses the sink for good. The halves'
tokens derive from the block's, so a replay of the batch stores nothing twice."""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clickhouse_connect.driver.client import Client
from clickhouse_connect.driver.exceptions import InterfaceError, OperationalError
from tally.schemas.codec import Codec
from tally.schemas.reasons import BadRowReason
from tally.sinks.avro_load import AvroLoader
from tally.sinks.batch import Batch, dedup_token
from tally.sinks.flow import Flow
from tally.sinks.metrics import BAD_RECORDS, INSERT_FAILURES, ROWS
from tally.sinks.tables import MAPPINGS, ItemFrames, Passthrough, Rejected, TableMapping

from tally.config import Settings
from tally.topics import BAD_ROWS

log = logging.getLogger(__name__)


class WarehouseUnavailable(RuntimeError):
    """Raised by the outage test hook, as a server that cannot be reached would."""


# Failures that say nothing about the data: wait them out and retry the same insert.
UNAVAILABLE = (WarehouseUnavailable, OperationalError, InterfaceError, OSError)

# (topic, partition, offset, value, rejection) of a record the fallback could not store
Reject = Callable[[str, int, int, bytes, Rejected], None]
# (topic, partition, offset, value, rows it gave) of a record, in row order
Source = tuple[str, int, int, bytes, int]

REFUSALS = 5  # attempts at an insert ClickHouse refuses before the refused rows are isolated


class Inserter:
    def __init__(self, settings: Settings, client: Client, codec: Codec, flow: Flow, reject: Reject) -> None:
        self.s = settings
        self.client = client
        self.codec = codec
        self.flow = flow
        self.reject = reject
        self.loader = AvroLoader(client, settings)
        self.passthrough = {m.table: Passthrough(codec, m.schema, m.columns) for m in MAPPINGS if m.passthrough}

    def insert(self, b: Batch, ids: dict[str, str]) -> None:
        """ids: the topic ids the batch was read under (topic_ids.py says which)."""
        for mapping in MAPPINGS:
            self._table(mapping, b, ids)

    def _table(self, mapping: TableMapping, b: Batch, ids: dict[str, str]) -> None:
        table = mapping.table
        token = dedup_token(table, b.ranges_of(self.s.topic(mapping.topic)), ids)
        for fp, frames in sorted(b.frames.get(table, {}).items()):
            raw = [r for r in b.raw.get(table, []) if r[0] == fp]
            self._frames(mapping, frames, raw, f"{token}:{fp.hex()}")
        rows = b.rows.get(table)
        if rows:
            self._store(table, mapping.columns, rows, b.sources.get(table, []), f"{token}:rows")

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
        sources: list[Source] = []
        for _, topic, partition, offset, value in raw:
            try:
                got = mapping.rows(self.codec, value)
            except Rejected as exc:
                self.reject(topic, partition, offset, value, exc)
                continue
            rows.extend(got)
            sources.append((topic, partition, offset, value, len(got)))
        if rows:
            self._store(mapping.table, mapping.columns, rows, sources, token)

    def _store(self, table: str, columns: tuple[str, ...], rows: list[list[Any]], sources: list[Source],
               token: str) -> None:
        """Insert the rows; if ClickHouse keeps refusing them, store what it takes and send
        the records it refuses to the dead letter."""
        refusal = self._attempt(table, lambda: self._rows(table, columns, rows, token), REFUSALS)
        if refusal is None:
            return
        groups: list[tuple[Source, list[list[Any]]]] = []
        at = 0
        for source in sources:
            groups.append((source, rows[at:at + source[4]]))
            at += source[4]
        log.error("ClickHouse refused %d rows of %s %d times (%s); isolating the refused records",
                  len(rows), table, REFUSALS, str(refusal).strip()[:300])
        if len(groups) == 1:
            self._dead_letter(table, groups[0][0], refusal)
        else:
            self._bisect(table, columns, groups[:len(groups) // 2], token + "<")
            self._bisect(table, columns, groups[len(groups) // 2:], token + ">")
        self.flow.resume_all()

    def _bisect(self, table: str, columns: tuple[str, ...], groups: list[tuple[Source, list[list[Any]]]],
                token: str) -> None:
        rows = [r for _, rs in groups for r in rs]
        refusal = self._attempt(table, lambda: self._rows(table, columns, rows, token), 1)
        if refusal is None:
            return
        if len(groups) == 1:
            self._dead_letter(table, groups[0][0], refusal)
            return
        self._bisect(table, columns, groups[:len(groups) // 2], token + "<")
        self._bisect(table, columns, groups[len(groups) // 2:], token + ">")

    def _attempt(self, table: str, fn: Callable[[], None], attempts: int) -> Exception | None:
        """Run fn: an unreachable warehouse is waited out for as long as it takes, a refusal
        of the data is tried `attempts` times. None once stored, else the last refusal."""
        for n in range(1, attempts + 1):
            try:
                self.flow.retry(f"insert into {table}", fn, retry_on=UNAVAILABLE)
                return None
            except UNAVAILABLE:
                raise  # stopping
            except Exception as exc:
                INSERT_FAILURES.labels(table=table).inc()
                if n == attempts:
                    return exc
                log.warning("insert into %s refused (attempt %d of %d): %s", table, n, attempts,
                            str(exc).strip()[:300])
                self.flow.pause_all()
                self.flow.idle(min(0.2 * 2 ** n, 5.0))
        return None

    def _dead_letter(self, table: str, source: Source, refusal: Exception) -> None:
        topic, partition, offset, value, _ = source
        detail = f"{table}: {str(refusal).strip()}"
        if topic == self.s.topic(BAD_ROWS):
            # A bad row cannot go back to bad-rows (it would loop): counted and logged only.
            BAD_RECORDS.labels(topic=BAD_ROWS, reason=BadRowReason.WAREHOUSE_REFUSED).inc()
            log.error("bad row %s/%d@%d refused by ClickHouse, not stored: %s", topic, partition, offset,
                      detail[:300])
            return
        self.reject(topic, partition, offset, value, Rejected(BadRowReason.WAREHOUSE_REFUSED, detail))

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
