"""`tally reconcile`: prove the aggregates against the raw rows.

For every site and day in the window it recomputes pageviews (events named
`pageview`) and unique visitors (`uniqExact(visitor_id)` over all events, as the
stream counts them) from the raw `pageviews` table (with
FINAL, so an unmerged replay cannot inflate it) and compares them with the
`site_day` aggregates (highest version per stream partition, summed across
partitions). Uniques agree exactly when the visitor salt rotates daily (the
default): a visitor then has one id per site and day.

It also checks the daily breakdown rollups (`daily_stats`, sinks/rollups.py) the
Stats API reads: for every site and day of the window whose rollup is in use (its raw
rows, all still kept, have the fingerprint it was computed from), every dimension
value is recomputed from the raw rows and compared with the rollup. A value on one
side only is drift too.

With sessions on, it also sessionises the raw rows (window functions: a new visit where a
visitor's gap reaches TALLY_SESSION_TIMEOUT_SECONDS, or the salt period changes) and
compares visits, bounces and total duration per site and start day with the session
aggregates (`session_stats_daily`). With monthly salts a visit that started before the
window is cut at its start; daily salts (the default) make that impossible.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from tally.schemas.engagement import COUNTED
from tally.sinks.query import run_sql
from tally.sinks.reports import Window, literal
from tally.sinks.rollups import ONE_DAY, ROWS, RULES, STAMP, kept_from, rollup_select

from tally.config import Settings


@dataclass(frozen=True)
class DayCheck:
    site: str
    day: str
    raw_pageviews: int
    agg_pageviews: int
    raw_visitors: int
    agg_visitors: int
    # visits, bounces, total duration (ms): raw sessionisation, session aggregates (0s when sessions are off)
    raw_sessions: tuple[int, int, int] = (0, 0, 0)
    agg_sessions: tuple[int, int, int] = (0, 0, 0)

    @property
    def drift(self) -> bool:
        return (self.raw_pageviews != self.agg_pageviews or self.raw_visitors != self.agg_visitors
                or self.raw_sessions != self.agg_sessions)


def sessions_sql(w: Window, timeout_ms: int, salt_period: str) -> str:
    """Visits, bounces and duration per site and start day, sessionised from the raw rows."""
    lo, hi = literal(w.date_from), literal(w.date_to)
    period, first = (("toDate(received_at)", f"toDate({lo})") if salt_period == "day"
                     else ("toStartOfMonth(received_at)", f"toStartOfMonth(toDate({lo}))"))
    # a total order (event_id breaks ties), so both window passes see the same sequence
    frame = "PARTITION BY site, visitor_id, period ORDER BY ts, event_id"
    return f"""
SELECT site, toDate(fromUnixTimestamp64Milli(start, 'UTC')) AS day, count() AS visits,
       countIf(pvs = 1 AND evs = 1) AS bounces, sum(stop - start) AS duration_ms
FROM (
    SELECT site, visitor_id, period, visit, min(ts) AS start, max(ts) AS stop,
           countIf(event = 'pageview') AS pvs, count() AS evs
    FROM (
        SELECT *, sum(new) OVER ({frame} ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW) AS visit
        FROM (
            SELECT site, visitor_id, period, ts, event_id, event,
                   ts - lagInFrame(ts, 1, toInt64(0)) OVER ({frame} ROWS BETWEEN 1 PRECEDING AND CURRENT ROW)
                       >= {int(timeout_ms)} AS new
            FROM (
                SELECT site, visitor_id, {period} AS period, toUnixTimestamp64Milli(received_at) AS ts, event_id, event
                FROM pageviews FINAL
                WHERE {period} BETWEEN {first} AND {hi} AND {COUNTED}
            )
        )
    )
    GROUP BY site, visitor_id, period, visit
)
WHERE day BETWEEN {lo} AND {hi}
GROUP BY site, day"""


def reconcile_sql(w: Window, timeout_ms: int = 0, salt_period: str = "day") -> str:
    lo, hi = literal(w.date_from), literal(w.date_to)
    if not timeout_ms:
        return _site_days_sql(lo, hi)
    return f"""
SELECT c.site, c.day, raw_pageviews, agg_pageviews, raw_visitors, agg_visitors,
       ifNull(s.visits, 0), ifNull(s.bounces, 0), ifNull(s.duration_ms, 0),
       ifNull(v.visits, 0), ifNull(v.bounces, 0), ifNull(v.total_duration_ms, 0)
FROM ({_site_days_sql(lo, hi)}) AS c
LEFT JOIN ({sessions_sql(w, timeout_ms, salt_period)}) AS s ON s.site = c.site AND s.day = c.day
LEFT JOIN (SELECT site, day, visits, bounces, total_duration_ms FROM session_stats_daily
           WHERE day BETWEEN {lo} AND {hi})
    AS v ON v.site = c.site AND v.day = c.day
ORDER BY c.site, c.day
"""


def _site_days_sql(lo: str, hi: str) -> str:
    return f"""
SELECT site, day, r.pageviews AS raw_pageviews, a.pageviews AS agg_pageviews, r.visitors AS raw_visitors,
       a.visitors AS agg_visitors
FROM
(
    SELECT site, toDate(received_at) AS day, countIf(event = 'pageview') AS pageviews,
           uniqExact(visitor_id) AS visitors
    FROM pageviews FINAL
    WHERE toDate(received_at) BETWEEN {lo} AND {hi} AND {COUNTED}
    GROUP BY site, day
) AS r
FULL OUTER JOIN
(
    SELECT site, day, pageviews, visitors FROM site_stats_daily WHERE day BETWEEN {lo} AND {hi}
) AS a
USING (site, day)
ORDER BY site, day
"""


def reconcile(settings: Settings, date_from: date, date_to: date) -> list[DayCheck]:
    timeout_ms = settings.session_timeout_seconds * 1000
    out = run_sql(settings, reconcile_sql(Window(date_from, date_to), timeout_ms, settings.salt_period), "JSONCompact")
    rows = json.loads(out)["data"]
    if not timeout_ms:
        return [DayCheck(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5])) for r in rows]
    return [DayCheck(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]),
                     (int(r[6]), int(r[7]), int(r[8])), (int(r[9]), int(r[10]), int(r[11]))) for r in rows]


@dataclass(frozen=True)
class RollupCheck:
    site: str
    day: str
    values: int  # (dimension, value) pairs compared
    differing: int

    @property
    def drift(self) -> bool:
        return self.differing > 0


# Site-days whose rollup the API uses and whose raw rows can still be read.
ROLLUPS_IN_USE = f"""
SELECT toString(day), groupArray(site) FROM
(
    SELECT site, day, raw_rows, raw_stamp, rules FROM daily_stats_log FINAL
    WHERE day BETWEEN {{lo:Date}} AND {{hi:Date}}
)
WHERE day >= {{kept:Date}} AND rules = {{rules:String}} AND (site, day, raw_rows, raw_stamp) IN
(
    SELECT site, toDate(received_at) AS day, {ROWS}, {STAMP} FROM pageviews
    WHERE toDate(received_at) BETWEEN {{lo:Date}} AND {{hi:Date}}
    GROUP BY site, day
)
GROUP BY day ORDER BY day
"""
ROLLUP_DAY = f"""
SELECT if(r.site = '', b.site, r.site) AS s, count(),
       countIf(r.pageviews != b.pageviews OR r.visitors != b.visitors OR r.events != b.events)
FROM (SELECT * FROM ({rollup_select(ONE_DAY)}) WHERE site IN {{sites:Array(String)}}) AS r
FULL OUTER JOIN
(
    SELECT site, dimension, value, pageviews, visitors, events FROM breakdowns_daily
    WHERE day = {{day:Date}} AND site IN {{sites:Array(String)}}
) AS b
ON r.site = b.site AND r.dimension = b.dimension AND r.value = b.value
GROUP BY s ORDER BY s
"""


def reconcile_rollups(settings: Settings, date_from: date, date_to: date) -> list[RollupCheck]:
    kept = max(date_from, kept_from(settings, datetime.now(UTC).date()))
    params = {"lo": str(date_from), "hi": str(date_to), "kept": str(kept), "rules": RULES}
    out = []
    for day, sites in json.loads(run_sql(settings, ROLLUPS_IN_USE, "JSONCompact", params))["data"]:
        rows = json.loads(run_sql(settings, ROLLUP_DAY, "JSONCompact", {"day": day, "sites": sites}))["data"]
        out += [RollupCheck(str(site), day, int(n), int(bad)) for site, n, bad in rows]
    return out


def latest_path(settings: Settings) -> Path:
    return settings.run_dir / "reconcile-latest.json"


def save_latest(settings: Settings, summary: dict[str, Any]) -> None:
    """The last run's summary, for the operations page (mode 0600, replaced atomically)."""
    path = latest_path(settings)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump({**summary, "checked_at": datetime.now(UTC).isoformat(timespec="seconds")}, fh)
    os.replace(tmp, path)


def read_latest(settings: Settings) -> dict[str, Any] | None:
    try:
        return json.loads(latest_path(settings).read_text())
    except (OSError, ValueError):
        return None
