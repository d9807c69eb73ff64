"""`tally reconcile`: prove the aggregates against the raw rows.

For every site and day in the window it recomputes pageviews (events named
`pageview`) and unique visitors (`uniqExact(visitor_id)` over all events, as the
stream counts them) from the raw `pageviews` table (with
FINAL, so an unmerged replay cannot inflate it) and compares them with the
`site_day` aggregates (highest version per stream partition, summed across
partitions). Uniques agree exactly when the visitor salt rotates daily (the
default): a visitor then has one id per site and day.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import date

from tally.sinks.query import run_sql
from tally.sinks.reports import Window, literal

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
