"""Daily breakdown rollups: `daily_stats`, computed by the engine from `pageviews FINAL`.

The Stats API's breakdowns (top pages, sources, devices, ...) over raw rows scan
every event of the range. For a day that is over, the same numbers per site and
dimension value (pageviews, exact visitors, events) are computed once, by one
`INSERT ... SELECT ... GROUP BY GROUPING SETS` over that day's raw rows for every
breakdown dimension at once, in the vocabulary of sinks/vocabulary.py, and the API
reads them instead (api/sql.py).

Exactness. Each rollup is recorded in `daily_stats_log` with the fingerprint of the
raw rows it was computed from: per site and day, their count and the sum (modulo
2^64) of a 64-bit hash of each row's content, over the unmerged rows, so a late row,
a replayed duplicate, a merge folding it, a deletion or a changed row changes it. The
engine keeps these sums per part in the `day_prints` projection of `pageviews`, so
reading them costs a few rows per part. A reader uses a day's rollup only while the
day's raw rows still have that fingerprint (checked in the same query), and reads the
raw rows otherwise: an answer never lags the raw rows.

Expiry. The TTL deletes a day's raw rows during day + TALLY_RAW_RETENTION_DAYS. On the
last SEAL_DAYS days before that, the builder seals a rollup whose fingerprint is still
equal: it then holds what the complete raw rows gave, and keeps answering for that day
once they expire, like `aggregates`. A day that expires without a sealed rollup is
read from what is left of its raw rows.

A check every TALLY_ROLLUP_CHECK_SECONDS compares the fingerprints of every day whose
raw rows are all kept with the log, and (re)computes a day that is over and whose
fingerprint or vocabulary changed, once it held still for one check (no wasted work
while late rows or a backlog are still arriving). Recomputing writes a new version of
the whole day, then switches the log to it; the superseded version is deleted at a
later check, once no query can still be reading it (twice TALLY_ANALYST_MAX_SECONDS). Runs in the sink, on a thread of its own
with its own session, at a lower CPU priority: inserts never wait for it.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta

from clickhouse_connect.driver.client import Client
from prometheus_client import Counter, Gauge
from tally.schemas.engagement import COUNTED
from tally.sinks.vocabulary import EXPRESSIONS, RAW_ONLY

from tally.clock import now_micros
from tally.config import Settings

log = logging.getLogger(__name__)

ROLLED = {d: e for d, e in EXPRESSIONS.items() if d not in RAW_ONLY}
DIMENSIONS: tuple[str, ...] = tuple(ROLLED)
# The vocabulary a rollup was computed with, and which rows it counts (engagement events are
# not events): a changed translation table recomputes the days that still have raw rows.
RULES = hashlib.sha256(repr((sorted(ROLLED.items()), COUNTED)).encode()).hexdigest()[:16]
SEAL_DAYS = 2  # a rollup is sealed on the last days before its raw rows start to expire
# The fingerprint of a day's raw rows: the same expressions here, in the API's queries and
# in the `day_prints` projection of `pageviews` that answers them
# (infra/clickhouse/009_daily_stats.sql; tests/test_rollups.py checks the projection is used).
# Every column a rollup reads is hashed, so a replay that changed a row changes it too.
ROWS = "count()"
STAMP = ("sum(sipHash64(tuple(event_id, received_at, hostname, path, event, visitor_id, referrer_host, "
         "referrer_source, utm_source, utm_medium, utm_campaign, browser, os, device)))")
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
    sealed: bool


def rollup_select(where: str) -> str:
    """The rollup rows (site, day, dimension, value, pageviews, visitors, events) of the raw
    rows that match `where`, for every dimension at once: one pass, one grouping set per
    dimension."""
    n = len(DIMENSIONS)
    exprs = ", ".join(f"{ROLLED[d]} AS d{i}" for i, d in enumerate(DIMENSIONS))
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
    WHERE ({where}) AND {COUNTED}
)
GROUP BY GROUPING SETS ({sets})
"""


ONE_DAY = ("received_at >= toDateTime64({day:Date}, 3, 'UTC') "
           "AND received_at < toDateTime64({day:Date} + 1, 3, 'UTC')")
INSERT_SQL = ("INSERT INTO daily_stats (site, day, dimension, value, pageviews, visitors, events, version) "
              f"SELECT *, {{version:UInt64}} FROM ({rollup_select(ONE_DAY)})")
# Per site and day, from the `day_prints` projection (the WHERE and GROUP BY use its keys only).
PRINTS_SQL = (f"SELECT site, toDate(received_at) AS day, {ROWS}, {STAMP} FROM pageviews "
              "WHERE toDate(received_at) >= {lo:Date} AND toDate(received_at) < {hi:Date} GROUP BY site, day")
LOG_SQL = ("SELECT site, day, version, raw_rows, raw_stamp, rules, sealed FROM daily_stats_log FINAL "
           "WHERE day >= {lo:Date}")
ORPHANS_SQL = ("SELECT DISTINCT day FROM daily_stats WHERE day >= {lo:Date} AND (site, day, version) NOT IN "
               "(SELECT site, day, version FROM daily_stats_log FINAL WHERE day >= {lo:Date})")
LOG_COLUMNS = ("site", "day", "version", "raw_rows", "raw_stamp", "rules", "sealed", "computed_at", "updated")


def kept_from(settings: Settings, today: date) -> date:
    """The oldest day whose raw rows are all still there: the TTL deletes a row once it is
    TALLY_RAW_RETENTION_DAYS old, so the rows of `today - retention` are expiring. Rollups
    are checked and computed from here on; before it only sealed ones answer."""
    return today - timedelta(days=settings.raw_retention_days - 1)


@dataclass
class Report:
    computed: list[date] = field(default_factory=list)
    waiting: list[date] = field(default_factory=list)  # changed since the last check: computed once still
    sealed: list[date] = field(default_factory=list)


class Rollups:
    """The builder. `check()` is one pass; `start()` runs it every TALLY_ROLLUP_CHECK_SECONDS
    on a thread of its own."""

    def __init__(self, settings: Settings, client: Client, clock: Callable[[], datetime] | None = None) -> None:
        self.s = settings
        self.client = client
        self.clock = clock or (lambda: datetime.now(UTC))
        self.seen: dict[date, dict[str, Print]] | None = None  # fingerprints at the last check
        self.superseded: dict[date, float] = {}  # days with an older version to delete: since when
        # A query reads the log, then the rollups: an old version stays until no query that
        # read the log before the switch can still run (the engine stops them at the limit).
        self.grace_seconds = 2.0 * settings.analyst_max_seconds
        self.first = True
        self.stopping = threading.Event()
        self.thread: threading.Thread | None = None

    def check(self) -> Report:
        today = self.clock().date()
        lo = kept_from(self.s, today)
        report = Report()
        if lo >= today:
            return report
        self._delete_superseded()
        if self.first:  # left by a process that stopped before deleting them
            for (d,) in self.client.query(ORPHANS_SQL, parameters={"lo": lo}).result_rows:
                self.superseded.setdefault(d, time.monotonic())
            self.first = False
        prints: dict[date, dict[str, Print]] = {}
        for site, day, rows, stamp in self.client.query(PRINTS_SQL, parameters={"lo": lo, "hi": today}).result_rows:
            prints.setdefault(day, {})[site] = Print(int(rows), int(stamp))
        logged: dict[date, dict[str, Logged]] = {}
        for site, day, version, rows, stamp, rules, sealed in self.client.query(LOG_SQL, parameters={"lo": lo}).result_rows:
            logged.setdefault(day, {})[site] = Logged(int(version), Print(int(rows), int(stamp)), rules, bool(sealed))
        seen, self.seen = self.seen, prints
        for day in sorted(set(prints) | set(logged), reverse=True):  # the most recent days matter most
            if self.stopping.is_set():
                break
            current, done = prints.get(day, {}), logged.get(day, {})
            sites = set(current) | set(done)
            if all(site in done and done[site].print == current.get(site, Print(0, 0)) and done[site].rules == RULES
                   for site in sites):
                if day < lo + timedelta(days=SEAL_DAYS) and not all(done[site].sealed for site in sites):
                    self._seal(day, {site: done[site] for site in sites})
                    report.sealed.append(day)
                continue
            if seen is not None and seen.get(day, {}) == current:
                self._compute(day, current, sites)
                report.computed.append(day)
            else:
                report.waiting.append(day)
        return report

    def _compute(self, day: date, current: dict[str, Print], sites: set[str]) -> None:
        """A new version of the day's rollups, then the log rows that put it in force. The
        fingerprint recorded is the one read before computing: rows that arrive meanwhile
        make it differ from the raw rows', so readers skip the day until the next computation."""
        version = now_micros()
        self.client.command(INSERT_SQL, parameters={"day": day, "version": version}, settings=BUILD_SETTINGS)
        now = datetime.now(UTC)
        rows = [[site, day, version, current.get(site, Print(0, 0)).rows, current.get(site, Print(0, 0)).stamp,
                 RULES, 0, now, version] for site in sorted(sites)]
        self.client.insert("daily_stats_log", rows, column_names=list(LOG_COLUMNS))
        self.superseded[day] = time.monotonic()
        COMPUTED.inc()
        log.info("rollups of %s computed (%d sites)", day, len(sites))

    def _seal(self, day: date, done: dict[str, Logged]) -> None:
        """The day's raw rows expire soon and still have the fingerprint of its rollups: mark
        them as the day's answer for when the raw rows are gone (the same version, sealed)."""
        now, updated = datetime.now(UTC), now_micros()
        rows = [[site, day, d.version, d.print.rows, d.print.stamp, d.rules, 1, now, updated]
                for site, d in sorted(done.items())]
        self.client.insert("daily_stats_log", rows, column_names=list(LOG_COLUMNS))
        log.info("rollups of %s sealed: their raw rows expire soon", day)

    def _delete_superseded(self) -> None:
        """Versions replaced long enough ago that no query still reads them."""
        now = time.monotonic()
        for day, since in sorted(self.superseded.items()):
            if now - since < self.grace_seconds:
                continue
            self.client.command(
                "DELETE FROM daily_stats WHERE day = {day:Date} AND version NOT IN "
                "(SELECT version FROM daily_stats_log FINAL WHERE day = {day:Date})",
                parameters={"day": day}, settings=BUILD_SETTINGS)
            del self.superseded[day]

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


def start(settings: Settings, connect: Callable[[], Client]) -> Rollups:
    """The sink's hook: the builder on its own session and thread."""
    rollups = Rollups(settings, connect())
    rollups.start()
    return rollups
