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
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

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

    @property
    def drift(self) -> bool:
        return self.raw_pageviews != self.agg_pageviews or self.raw_visitors != self.agg_visitors


def reconcile_sql(w: Window) -> str:
    lo, hi = literal(w.date_from), literal(w.date_to)
    return f"""
SELECT site, day, r.pageviews, a.pageviews, r.visitors, a.visitors
FROM
(
    SELECT site, toDate(received_at) AS day, countIf(event = 'pageview') AS pageviews,
           uniqExact(visitor_id) AS visitors
    FROM pageviews FINAL
    WHERE toDate(received_at) BETWEEN {lo} AND {hi}
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
    out = run_sql(settings, reconcile_sql(Window(date_from, date_to)), "JSONCompact")
    return [DayCheck(str(r[0]), str(r[1]), int(r[2]), int(r[3]), int(r[4]), int(r[5]))
            for r in json.loads(out)["data"]]


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
