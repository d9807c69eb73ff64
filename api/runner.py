"""Runs a typed Stats API query and shapes Plausible's answer: results, meta, query.

Semantics follow Plausible's query runner: `percentage` is a row's visitors over
the visitors of the whole filtered set (one decimal), and `conversion_rate` the same
over the set without its goal filters (one decimal, 0 rather than null); `views_per_visit` is
the other metric with decimals; the default order is the
first metric descending (time ascending first for a timeseries); time buckets
without data are left out unless comparisons are asked for (then they are
filled with zeros so every bucket has its comparison); a comparison covers the
same dimension values as the main page of results, and `change` is the percent
change, rounded (for `bounce_rate` and `conversion_rate`: the difference in points).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from typing import Any

from tally.api.goals import GOALS_SQL, Goals, check_configured, uses_goals
from tally.api.request import Branch, Filter, Leaf, Range, StatsQuery
from tally.api.sql import RATIOS, Builder, Sql

Rows = Callable[[Sql], Awaitable[list[list[Any]]]]


@lru_cache(maxsize=256)
def built(q: StatsQuery, salt_period: str, kept: date | None, goals: Goals | None, rng: Range, extra: Filter | None,
          totals: bool, paginate: bool, goal_filters: bool) -> Sql:
    """Builder's SQL, kept per query: a dashboard asks the same questions again and again,
    and building one costs about as much CPU as the rest of the API's own work on it. The
    Sql is shared: nothing may change it."""
    return Builder(q, salt_period, kept, goals).build(rng, extra, totals=totals, paginate=paginate,
                                                      goal_filters=goal_filters)


def percent_change(old: float | None, new: float | None) -> int | None:
    if old is None or new is None:
        return None
    if old == 0:
        return 100 if new > 0 else 0
    return round((new - old) / old * 100)


def change(metric: str, old: float | None, new: float | None) -> float | None:
    """Plausible's `change`: percentage points for bounce_rate (none from 0) and
    conversion_rate, else percent."""
    if metric == "bounce_rate":
        return new - old if old and new is not None else None
    if metric == "conversion_rate":
        return round(new - old, 1) if old is not None and new is not None else None
    return percent_change(old, new)


def percentage(visitors: int, total: int) -> float | None:
    return round(visitors / total * 100, 1) if total > 0 else None


def conversion_rate(converted: int, total: int) -> float:
    """Converting visitors over all visitors, in percent with one decimal, rounded half up; 0 without visitors."""
    return (2000 * converted + total) // (2 * total) / 10 if total > 0 else 0.0


def _week_label(d: date, first: date) -> date:
    monday = d - timedelta(days=d.weekday())
    return monday if monday >= first else d


def time_labels(dimension: str, rng: Range) -> list[str]:
    """Every bucket of the range, as Plausible lists them in `meta.time_labels`."""
    first, last = rng.first_day, rng.last_day
    if dimension == "time:hour":
        start = rng.first.replace(minute=0, second=0, microsecond=0)
        out, t = [], start
        while t < rng.end:
            out.append(t.strftime("%Y-%m-%d %H:00:00"))
            t += timedelta(hours=1)
        return out
    if dimension == "time:day":
        return [str(first + timedelta(days=i)) for i in range((last - first).days + 1)]
    if dimension == "time:week":
        out = []
        d = first
        while d <= last:
            label = str(_week_label(d, first))
            if label not in out:
                out.append(label)
            d += timedelta(days=7 if d != first else 7 - d.weekday())
        return out
    months, d = [], first.replace(day=1)
    while d <= last:
        months.append(str(d))
        d = (d + timedelta(days=32)).replace(day=1)
    return months


def comparison_range(q: StatsQuery, today: date) -> Range:
    """Plausible's comparison periods: the same number of days just before (previous_period),
    or 365 days earlier (year_over_year); a period running into the future is compared up to today."""
    first, last = q.range.first_day, min(q.range.last_day, today)
    if q.comparison == "year_over_year":
        start, end = first - timedelta(days=365), last - timedelta(days=365)
    else:
        shift = (first - last).days - 1
        start, end = first + timedelta(days=shift), last + timedelta(days=shift)
    if q.match_day_of_week and start.weekday() != first.weekday():
        ahead = (first.weekday() - start.weekday()) % 7
        candidate = start + timedelta(days=ahead)
        if candidate == first:
            candidate -= timedelta(days=7)
        end += candidate - start
        start = candidate
    return Range.of_days(start, end)


class Runner:
    def __init__(self, q: StatsQuery, rows: Rows, salt_period: str = "day", kept: date | None = None) -> None:
        """kept: see Builder (None: no rollups)."""
        self.q = q
        self.rows = rows
        self.salt_period = salt_period
        self.kept = kept
        self.goals: Goals | None = None  # the site's, loaded by run() when the query is about goals

    def build(self, rng: Range, extra: Filter | None = None, totals: bool = False, paginate: bool = True,
              goal_filters: bool = True) -> Sql:
        return built(self.q, self.salt_period, self.kept, self.goals, rng, extra, totals, paginate, goal_filters)

    async def fetch(self, rng: Range, extra: Filter | None = None, paginate: bool = True) -> tuple[list[dict[str, Any]], int]:
        """Result rows (dimensions, metrics in the query's order) and the count before pagination."""
        q = self.q
        sql = self.build(rng, extra, paginate=paginate)
        # The denominators, over the whole filtered set without `extra`, queried with the rows:
        # percentage keeps the goal filters, conversion_rate drops them (Plausible's).
        totals = {m: self.build(rng, totals=True, goal_filters=m == "percentage") for m in RATIOS
                  if m in q.metrics}
        if totals:
            data, *answers = await asyncio.gather(self.rows(sql), *(self.rows(t) for t in totals.values()))
        else:  # one query: awaited here, without a task and a loop turn around it
            data, answers = await self.rows(sql), []
        total = {m: int(a[0][0]) if a else 0 for m, a in zip(totals, answers, strict=True)}
        out, total_rows = [], 0
        n = len(sql.dimensions)
        for row in data:
            values = dict(zip(sql.metrics, (None if v is None else float(v) if m == "views_per_visit" else int(v)
                                            for m, v in zip(sql.metrics, row[n:n + len(sql.metrics)], strict=True)),
                              strict=True))
            if "percentage" in total:
                values["percentage"] = percentage(values["visitors"], total["percentage"])
            if "conversion_rate" in total:
                values["conversion_rate"] = conversion_rate(values["visitors"], total["conversion_rate"])
            out.append({"dimensions": [str(v) for v in row[:n]], "metrics": [values[m] for m in q.metrics]})
            if sql.total_rows:
                total_rows = int(row[-1])
        if not sql.total_rows:
            total_rows = len(out)
        return out, total_rows

    async def run(self, now: datetime | None = None) -> dict[str, Any]:
        q = self.q
        today = (now or datetime.now(UTC)).date()
        if uses_goals(q.dimensions, q.filters):
            self.goals = Goals.of(await self.rows(Sql(GOALS_SQL, {"site": q.site})))
            check_configured(q.filters, self.goals)  # RequestError: a 400 naming the filter
        results, total_rows = await self.fetch(q.range)
        time_dim = q.time_dimension
        if q.comparison:
            results = await self.compare(results, today)
        meta: dict[str, Any] = {}
        if q.time_labels and time_dim:
            meta["time_labels"] = time_labels(time_dim, q.range)
        if q.total_rows:
            meta["total_rows"] = total_rows
        return {"results": results, "meta": meta, "query": self.echo()}

    async def compare(self, results: list[dict[str, Any]], today: date) -> list[dict[str, Any]]:
        q = self.q
        crange = comparison_range(q, today)
        time_dim = q.time_dimension
        if q.dimensions and q.dimensions == (time_dim,):  # every bucket gets its comparison
            have = {tuple(r["dimensions"]) for r in results}
            results = results + [{"dimensions": [label], "metrics": [0] * len(q.metrics)}
                                 for label in time_labels(time_dim, q.range) if (label,) not in have]
            results.sort(key=lambda r: r["dimensions"][0], reverse=dict(q.order_by).get(time_dim) == "desc")
        lookup: dict[str, str] = {}
        if time_dim:
            lookup = dict(zip(time_labels(time_dim, q.range), time_labels(time_dim, crange), strict=False))
        keys = [i for i, d in enumerate(q.dimensions) if not d.startswith("time")]
        groups = {tuple(r["dimensions"][i] for i in keys) for r in results} if keys else set()
        extra: Filter | None = None
        if keys and groups:
            def one(values: tuple[str, ...]) -> Filter:
                leaves = tuple(Leaf("is", q.dimensions[i], (v,)) for i, v in zip(keys, values, strict=True))
                return leaves[0] if len(leaves) == 1 else Branch("and", leaves)
            extra = Branch("or", tuple(one(g) for g in sorted(groups)))
        # Restricted to the main page's dimension values; the percentage denominator stays
        # all visitors of the comparison period (fetch computes it without `extra`).
        comp_rows, _ = await self.fetch(crange, extra, paginate=False)
        index = {tuple(r["dimensions"]): r["metrics"] for r in comp_rows}
        for r in results:
            dims = [lookup.get(v, v) if q.dimensions[i].startswith("time") else v for i, v in enumerate(r["dimensions"])]
            metrics = index.get(tuple(dims), [0] * len(q.metrics))  # Plausible's empty row
            r["comparison"] = {"dimensions": dims, "metrics": metrics,
                               "change": [change(m, o, n) for m, o, n in zip(q.metrics, metrics, r["metrics"], strict=True)]}
        return results

    def echo(self) -> dict[str, Any]:
        """The `query` part of the answer: the request as Tally understood it."""
        q = self.q
        last = q.range.end - timedelta(seconds=1)
        include = {k: v for k, v in (q.raw.get("include") or {}).items() if v}
        return {
            "site_id": q.site,
            "metrics": list(q.metrics),
            "date_range": [q.range.first.strftime("%Y-%m-%dT%H:%M:%SZ"), last.strftime("%Y-%m-%dT%H:%M:%SZ")],
            "filters": q.raw.get("filters", []),
            "dimensions": list(q.dimensions),
            "order_by": [list(o) for o in q.order_by],
            "include": include,
            "pagination": {"limit": q.limit, "offset": q.offset},
        }


