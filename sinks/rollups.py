"""Daily breakdown rollups: `daily_stats`, computed by the engine from `pageviews FINAL`.

The Stats API's breakdowns (top pages, sources, devices, ...) over raw rows scan
every event of the range. For a day that is over, the same numbers per site and
dimension value (pageviews, exact visitors, events) are computed once, by one
`INSERT ... SELECT ... GROUP BY GROUPING SETS` over that day's raw rows for every
breakdown dimension at once, in the vocabulary of api/vocabulary.py, and the API
reads them instead (api/sql.py).

Exactness. Each rollup is recorded in `daily_stats_log` with the fingerprint of the
raw rows it was computed from: their count and the sum of each row's millisecond of
the day, over the unmerged rows (a late row or a folded duplicate changes it; only
the columns ClickHouse reads for `received_at` are scanned). A check every
TALLY_ROLLUP_CHECK_SECONDS fingerprints the recent days and recomputes a day whose
fingerprint changed (late rows, deletions) or whose vocabulary changed, once it held
still for one check (no wasted work while a backlog is still arriving). A day is
*closed* once no event for it can reach the warehouse any more: stage 1 drops events
older than the allowed lateness (by the worker clock, plus a margin), and the sink has
committed past the `pageviews.enriched` offsets seen after that. Readers trust a
closed day's rollup; for a day not closed yet they use it only when its fingerprint
still equals the raw rows' (checked in the same query), and read the raw rows otherwise.

Recomputing writes a new version of the whole day, then switches the log to it;
the superseded version is deleted at the next check (no reader still uses it).
Days past raw retention keep their rollups, like `aggregates`. Runs in the sink,
on a thread of its own with its own session, at a lower CPU priority: inserts never
wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any

from clickhouse_connect.driver.client import Client
from prometheus_client import Counter, Gauge
from tally.api.vocabulary import EXPRESSIONS

from tally.config import Settings

log = logging.getLogger(__name__)

DIMENSIONS: tuple[str, ...] = tuple(EXPRESSIONS)
# The vocabulary a rollup was computed with: a changed translation table recomputes
# the days that still have raw rows.
RULES = hashlib.sha256(repr(sorted(EXPRESSIONS.items())).encode()).hexdigest()[:16]
CLOSE_MARGIN = timedelta(hours=1)  # as the stream's windows: events in flight past the lateness bound
RETENTION_MARGIN_DAYS = 2  # never recompute a day whose raw rows the TTL may have started to delete
# The fingerprint of a day's raw rows, the same text here and in the API's queries.
ROWS = "count()"
STAMP = "sum(toUInt64(toUnixTimestamp64Milli(received_at) % 86400000))"
# The query settings of the builder: background work, below the sink's inserts.
BUILD_SETTINGS = {"max_threads": 2, "os_thread_priority": 10}

COMPUTED = Counter("tally_rollup_days_total", "Days whose breakdown rollups were (re)computed.")
FAILURES = Counter("tally_rollup_failures_total", "Rollup checks that failed (retried at the next check).")
LAST_CHECK = Gauge("tally_rollup_last_check_seconds", "Duration of the last rollup check.")


@dataclass(frozen=True)
class Print:
    rows: int
    stamp: int


@dataclass(frozen=True)
class Logged:
    version: int
    print: Print
    rules: str
    closed: bool


Position = Callable[[], tuple[dict[int, int], dict[int, int]]]  # (committed, end) offsets per partition


def rollup_select(where: str) -> str:
    """The rollup rows (site, day, dimension, value, pageviews, visitors, events) of the raw
    rows that match `where`, for every dimension at once: one pass, one grouping set per
    dimension."""
    n = len(DIMENSIONS)
    exprs = ", ".join(f"{EXPRESSIONS[d]} AS d{i}" for i, d in enumerate(DIMENSIONS))
    # grouping(dI) is 0 in the grouping set that holds dI.
    names = ", ".join(f"grouping(d{i}) = 0, '{d}'" for i, d in enumerate(DIMENSIONS[:-1]))
    values = ", ".join(f"grouping(d{i}) = 0, d{i}" for i in range(n - 1))
    sets = ", ".join(f"(site, day, d{i})" for i in range(n))
    return f"""
SELECT site, day, multiIf({names}, '{DIMENSIONS[-1]}') AS dimension, multiIf({values}, d{n - 1}) AS value,
       countIf(event = 'pageview') AS pageviews, uniqExact(visitor_id) AS visitors, count() AS events
FROM
(
    SELECT site, toDate(received_at) AS day, event, visitor_id, {exprs}
    FROM pageviews FINAL
    WHERE {where}
)
GROUP BY GROUPING SETS ({sets})
"""


ONE_DAY = ("received_at >= toDateTime64({day:Date}, 3, 'UTC') "
           "AND received_at < toDateTime64({day:Date} + 1, 3, 'UTC')")
INSERT_SQL = ("INSERT INTO daily_stats (site, day, dimension, value, pageviews, visitors, events, version) "
              f"SELECT *, {{version:UInt64}} FROM ({rollup_select(ONE_DAY)})")


def fingerprint_sql() -> str:
    return (f"SELECT site, toDate(received_at) AS day, {ROWS}, {STAMP} FROM pageviews "
            "WHERE received_at >= toDateTime64({lo:Date}, 3, 'UTC') AND received_at < toDateTime64({hi:Date}, 3, 'UTC') "
            "GROUP BY site, day")


LOG_SQL = ("SELECT site, day, version, raw_rows, raw_stamp, rules, closed FROM daily_stats_log FINAL "
           "WHERE day >= {lo:Date}")
ORPHANS_SQL = ("SELECT DISTINCT day FROM daily_stats WHERE day >= {lo:Date} AND (site, day, version) NOT IN "
               "(SELECT site, day, version FROM daily_stats_log FINAL WHERE day >= {lo:Date})")
LOG_COLUMNS = ("site", "day", "version", "raw_rows", "raw_stamp", "rules", "closed", "computed_at", "updated")


def _micros(now: datetime) -> int:
    return int(now.timestamp() * 1_000_000)


@dataclass
class Report:
    computed: list[date] = field(default_factory=list)
    closed: list[date] = field(default_factory=list)
    waiting: list[date] = field(default_factory=list)  # changed since the last check: computed once still


class Rollups:
    """The builder. `check()` is one pass; `start()` runs it every TALLY_ROLLUP_CHECK_SECONDS
    on a thread of its own. `position` gives the sink's committed and end offsets of
    `pageviews.enriched` (None: nothing is on its way to the warehouse, as in a
    warehouse written directly)."""

    def __init__(self, settings: Settings, client: Client, position: Position | None = None,
                 clock: Callable[[], datetime] | None = None) -> None:
        self.s = settings
        self.client = client
        self.position = position
        self.clock = clock or (lambda: datetime.now(UTC))
        self.lateness = timedelta(hours=min(settings.allowed_lateness_hours, settings.salt_grace_hours))
        # Days within this many days are checked every time; older ones once, at the first check.
        self.recheck_days = self.lateness.days + 1 + enriched_retention_days(settings)
        self.seen: dict[date, dict[str, Print]] = {}  # fingerprints at the last check
        self.marks: dict[date, dict[int, int]] = {}  # end offsets seen once a day was past its lateness
        self.superseded: set[date] = set()  # days with an older version to delete
        self.first = True
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    # --- one check ---------------------------------------------------------------

    def check(self) -> Report:
        now = self.clock()
        today = now.date()
        floor = kept_from(self.s, today)
        recent = max(floor, today - timedelta(days=self.recheck_days))
        lo = floor if self.first else recent
        report = Report()
        if lo >= today:
            return report
        self._delete_superseded()
        if self.first:  # left by a process that stopped before deleting them
            self.superseded.update(d for (d,) in self.client.query(ORPHANS_SQL, parameters={"lo": lo}).result_rows)
        prints: dict[date, dict[str, Print]] = {}
        for site, day, rows, stamp in self.client.query(fingerprint_sql(), parameters={"lo": lo, "hi": today}).result_rows:
            prints.setdefault(day, {})[site] = Print(int(rows), int(stamp))
        logged: dict[date, dict[str, Logged]] = {}
        for site, day, version, rows, stamp, rules, closed in self.client.query(LOG_SQL, parameters={"lo": lo}).result_rows:
            logged.setdefault(day, {})[site] = Logged(int(version), Print(int(rows), int(stamp)), rules, bool(closed))
        position: tuple[dict[int, int], dict[int, int]] | None | bool = False  # False: not asked yet
        for day in sorted(set(prints) | set(logged), reverse=True):  # the most recent days matter most
            if self.stopping.is_set():
                break
            current, done = prints.get(day, {}), logged.get(day, {})
            sites = set(current) | set(done)
            fresh = all(site in done and done[site].print == current.get(site, Print(0, 0)) and done[site].rules == RULES
                        for site in sites)
            past_lateness = now + timedelta(seconds=self.s.clock_offset_seconds) >= (
                datetime.combine(day + timedelta(days=1), datetime.min.time(), UTC) + self.lateness + CLOSE_MARGIN)
            closed = False
            if past_lateness and (not fresh or not all(done[s].closed for s in sites)):
                if position is False:
                    position = self._position()
                closed = self._caught_up(day, position)
            if not fresh:
                # A day older than the recent window cannot change any more: no need to wait.
                if day < recent or self.seen.get(day) == current:
                    self._compute(day, current, sites, closed, now)
                    report.computed.append(day)
                else:
                    report.waiting.append(day)
            elif closed and not all(done[s].closed for s in sites):
                self._mark_closed(day, done, now)
                report.closed.append(day)
            self.seen[day] = current
        self.seen = {d: p for d, p in self.seen.items() if d >= recent}
        self.marks = {d: m for d, m in self.marks.items() if d >= recent}
        self.first = False
        return report

    def _position(self) -> tuple[dict[int, int], dict[int, int]] | None:
        if self.position is None:
            return {}, {}
        try:
            return self.position()
        except Exception as exc:  # the broker is away: no day closes until it answers
            log.warning("cannot read the sink's offsets (%s); no day closes at this check", str(exc).strip()[:300])
            return None

    def _caught_up(self, day: date, position: tuple[dict[int, int], dict[int, int]] | None) -> bool:
        """Has the sink stored everything stage 1 wrote before this day's lateness ran out?
        The end offsets seen at the first check after that moment are the mark."""
        if position is None:
            return False
        committed, ends = position
        mark = self.marks.setdefault(day, dict(ends))
        return all(committed.get(p, -1) >= end for p, end in mark.items() if end > 0)

    def _compute(self, day: date, current: dict[str, Print], sites: set[str], closed: bool, now: datetime) -> None:
        version = _micros(datetime.now(UTC))
        self.client.command(INSERT_SQL, parameters={"day": day, "version": version}, settings=BUILD_SETTINGS)
        stamp = datetime.now(UTC)
        rows = [[site, day, version, current.get(site, Print(0, 0)).rows, current.get(site, Print(0, 0)).stamp,
                 RULES, int(closed), stamp, version] for site in sorted(sites)]
        self.client.insert("daily_stats_log", rows, column_names=list(LOG_COLUMNS))
        self.superseded.add(day)
        COMPUTED.inc()
        log.info("rollups of %s computed (%d sites%s)", day, len(sites), ", closed" if closed else "")

    def _mark_closed(self, day: date, done: dict[str, Logged], now: datetime) -> None:
        updated = _micros(datetime.now(UTC))
        rows = [[site, day, e.version, e.print.rows, e.print.stamp, e.rules, 1, now, updated] for site, e in sorted(done.items())]
        self.client.insert("daily_stats_log", rows, column_names=list(LOG_COLUMNS))

    def _delete_superseded(self) -> None:
        """Versions replaced at an earlier check: no query still reads them (a query reads
        the log and the rollups together, and no analyst query runs longer than a check)."""
        for day in sorted(self.superseded):
            self.client.command(
                "DELETE FROM daily_stats WHERE day = {day:Date} AND version NOT IN "
                "(SELECT version FROM daily_stats_log FINAL WHERE day = {day:Date})",
                parameters={"day": day}, settings=BUILD_SETTINGS)
        self.superseded.clear()

    # --- the background thread --------------------------------------------------------

    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name="rollups", daemon=True)
        self.thread.start()

    def _loop(self) -> None:
        with contextlib.suppress(OSError):  # nice 10: under CPU pressure the sink's inserts go first
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 10)
        while not self.stopping.is_set():
            started = datetime.now(UTC)
            try:
                self.check()
            except Exception as exc:  # the warehouse is busy or away: the next check retries
                FAILURES.inc()
                log.warning("rollup check failed (%s); retrying in %ss", str(exc).strip()[:300],
                            self.s.rollup_check_seconds)
            LAST_CHECK.set((datetime.now(UTC) - started).total_seconds())
            self.stopping.wait(self.s.rollup_check_seconds)

    def stop(self) -> None:
        self.stopping.set()
        if self.thread is not None:
            self.thread.join(60)
        if self.thread is None or not self.thread.is_alive():
            self.client.close()


def kept_from(settings: Settings, today: date) -> date:
    """The oldest day whose raw rows are all still there (the TTL deletes them row by row):
    rollups are computed from here on; older ones are kept as they are."""
    return today - timedelta(days=settings.raw_retention_days - RETENTION_MARGIN_DAYS)


def enriched_retention_days(settings: Settings) -> int:
    """How long the sink can still find a record in `pageviews.enriched` (its retention)."""
    from tally.topics import specs

    spec = next(t for t in specs(settings) if t.name == "pageviews.enriched")
    return -(-int(spec.config["retention.ms"]) // 86_400_000)


def kafka_position(settings: Settings) -> Position:
    """The sink group's committed offsets and the end offsets of `pageviews.enriched`."""
    from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition
    from confluent_kafka.admin import OffsetSpec

    from tally.topics import admin

    client = admin(settings)
    topic = settings.topic("pageviews.enriched")
    group = f"{settings.app_id}-sink"

    def position() -> tuple[dict[int, int], dict[int, int]]:
        meta = client.list_topics(topic, timeout=10).topics[topic]
        tps = [TopicPartition(topic, p) for p in sorted(meta.partitions)]
        ends = client.list_offsets({tp: OffsetSpec.latest() for tp in tps}, request_timeout=10)
        committed = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, tps)],
                                                       request_timeout=10)[group].result(10)
        return ({tp.partition: tp.offset for tp in committed.topic_partitions},
                {tp.partition: f.result(10).offset for tp, f in ends.items()})

    return position


def start(settings: Settings, connect: Callable[[], Client]) -> Rollups:
    """The sink's hook: the builder on its own session and thread."""
    rollups = Rollups(settings, connect(), kafka_position(settings))
    rollups.start()
    return rollups


def log_rows(client: Client) -> list[tuple[Any, ...]]:
    """The rollup log, newest row per site and day (for tests and `tally reconcile`)."""
    return client.query("SELECT site, day, version, raw_rows, raw_stamp, rules, closed FROM daily_stats_log FINAL "
                        "ORDER BY site, day").result_rows
