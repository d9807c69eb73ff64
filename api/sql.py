"""SQL for a typed Stats API query: never user SQL, values only as query parameters.

Three sources, chosen per query:

- the stream's aggregates (`aggregates` FINAL, summed over stream partitions, as the
  analysts' views and `tally reconcile` read them) when they answer the question:
  no filters, whole UTC days, metrics `visitors`/`pageviews`, and no dimension, a
  time dimension (`site_day`, `site_hour`), or `event:page` with `pageviews` only
  (`path_day`). Visitors over several days are the sum of daily visitors, which is
  what they are when the visitor salt rotates daily (the default): with a monthly
  salt such queries read the raw rows instead;
- a breakdown by one dimension (top pages, sources, devices, ...), unfiltered or
  filtered on that dimension only, over whole days: the daily rollups (`daily_stats`,
  sinks/rollups.py) of the days that have a usable one, plus the raw rows of the
  other days (today, days not computed yet or changed since), summed per value. A
  rollup is usable while the fingerprint of its day's raw rows still equals the one it
  was computed from and it was computed with the current vocabulary (checked in the
  same query); where the raw rows have started to expire, only if it was sealed (found
  equal to the complete raw rows just before they started to expire). Visitors summed over
  days are exact under the daily salt, as for the aggregates; with a monthly salt a
  multi-day breakdown with visitors reads the raw rows;
- otherwise the raw rows (`pageviews` FINAL, so a replayed event counts once):
  visitors are `uniqExact(visitor_id)`, pageviews the events named `pageview`.

Goals (api/goals.py) are always answered from the raw rows: a row converts the goals whose
event or page pattern it matches, and a query on `event:goal` keeps the converting rows
(one row per goal converted, for the dimension), so `visitors` are unique converting
visitors and `events` conversions. The site's goals are array parameters.

Visit metrics (`visits`, `bounce_rate`, `visit_duration`, `views_per_visit`) come from
`sessions` FINAL: a visit counts in a range (and a time bucket) when its session_start is
in it, and its visit:* values are those of its entry pageview. With event metrics too, the
two parts are added up per dimension value (UNION ALL, then sums). A query broken down or
filtered by entry or exit page reads `sessions` only: visitors, pageviews and events are
then those of the matching visits.

The query text depends only on the query's shape, not on its values (site, dates,
filter clauses, page), so the SQL guard checks each shape once.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import date
from typing import Any

from tally.api.goals import Goals, converted, goal_leaves, uses_goals, without_goals
from tally.api.request import (
    ENGAGEMENT_METRICS,
    PROPS,
    SESSION_METRICS,
    Branch,
    Filter,
    Range,
    StatsQuery,
    dimensions_of,
    is_props,
    sessions_only,
)
from tally.schemas.engagement import COUNTED, ENGAGED_MS, ENGAGEMENT, SCROLL_DEPTH
from tally.sinks.rollups import DIMENSIONS as ROLLUP_DIMENSIONS
from tally.sinks.rollups import ROWS, RULES, STAMP
from tally.sinks.vocabulary import EVENT_ONLY, EXPRESSIONS

COUNTRY = "if(country = '', '(not set)', country)"  # ISO 3166-1 alpha-2
EVENT_EXPRESSIONS = {**EXPRESSIONS, "visit:country": COUNTRY}  # over a `pageviews` row
# Over a `sessions` row: it carries its entry pageview's referrer, UTM, device, browser, OS, country.
SESSION_EXPRESSIONS = {**{d: e for d, e in EXPRESSIONS.items() if d.startswith("visit:") and d not in EVENT_ONLY},
                       "visit:country": COUNTRY,
                       "visit:entry_page": "entry_page", "visit:exit_page": "exit_page"}
# Partial sums of a visits query, from `pageviews` rows (event part) and `sessions` rows;
# "-" where a part has none. The outer query adds the parts up per dimension value.
PARTS = {"visitors": ("uniqExact(visitor_id)", "uniqExact(visitor_id)"),
         "pageviews": ("countIf(event = 'pageview')", "sum(pageviews)"), "events": ("count()", "sum(events)"),
         "visits": ("-", "count()"), "bounces": ("-", "sum(bounce)"), "duration_ms": ("-", "sum(duration_ms)"),
         "visit_pageviews": ("-", "sum(pageviews)")}
# Ratios rounded half up in integer arithmetic: the same figure on every engine and in Python.
VISIT_METRICS = {
    "visitors": "toInt64(sum(p_visitors))", "pageviews": "toInt64(sum(p_pageviews))", "events": "toInt64(sum(p_events))",
    "visits": "toInt64(sum(p_visits))",
    "bounce_rate": "toInt64(if(sum(p_visits) = 0, 0, intDiv(200 * sum(p_bounces) + sum(p_visits), 2 * sum(p_visits))))",
    "visit_duration": "toInt64(if(sum(p_visits) = 0, 0, intDiv(2 * sum(p_duration_ms) + 1000 * sum(p_visits), "
                      "2000 * sum(p_visits))))",
    "views_per_visit": "toFloat64(if(sum(p_visits) = 0, 0, intDiv(200 * sum(p_visit_pageviews) + sum(p_visits), "
                       "2 * sum(p_visits)) / 100))",
}
RAW_METRICS = {"visitors": "uniqExact(visitor_id)", "pageviews": "countIf(event = 'pageview')", "events": "count()"}
# Time on page (seconds) and scroll depth (%) from the partial sums of an engagement query:
# engaged time over page visits, and the deepest scroll per visitor and page, averaged.
ENGAGEMENT_SQL = {
    "time_on_page": "if(sum(p_page_visits) = 0, NULL, toInt64(intDiv(2 * sum(p_engaged_ms) + 1000 * sum(p_page_visits), "
                    "2000 * sum(p_page_visits))))",
    "scroll_depth": "if(sum(p_scrolls) = 0, NULL, toInt64(intDiv(2 * sum(p_scroll_sum) + sum(p_scrolls), "
                    "2 * sum(p_scrolls))))",
}
ENGAGEMENT_PARTS = ("visitors", "pageviews", "events", "engaged_ms", "page_visits", "scroll_sum", "scrolls")
ENGAGED = f"event = '{ENGAGEMENT}'"
AGG_METRICS = {"visitors": "sum(uniques)", "pageviews": "sum(count)"}
ROLLUP_METRICS = {"visitors": "visitors", "pageviews": "pageviews", "events": "events"}  # columns of daily_stats
TIME_FORMATS = {  # bucket label of a UTC timestamp column, as Plausible prints them
    "time:hour": "formatDateTime(toStartOfHour({c}), '%Y-%m-%d %H:00:00', 'UTC')",
    "time:day": "toString(toDate({c}))",
    "time:week": "toString(greatest(toMonday(toDate({c})), toDate({{week_floor:String}})))",
    "time:month": "toString(toStartOfMonth({c}))",
}


@dataclass
class Sql:
    text: str
    params: dict[str, Any] = field(default_factory=dict)
    dimensions: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()  # columns after the dimensions, in this order
    total_rows: bool = False  # a last column with the row count before LIMIT


RATIOS = ("percentage", "conversion_rate")  # computed from `visitors` and the totals query (runner.py)


def metric_columns(metrics: tuple[str, ...]) -> tuple[str, ...]:
    """The metrics a query selects: `percentage` and `conversion_rate` are computed from `visitors`."""
    cols = [m for m in metrics if m not in RATIOS]
    if set(RATIOS) & set(metrics) and "visitors" not in cols:
        cols.append("visitors")
    return tuple(cols)


def aggregate_kind(q: StatsQuery, rng: Range, extra: Filter | None, salt_period: str) -> str | None:
    """The aggregate kind that answers this query exactly, or None (read the raw rows)."""
    cols = metric_columns(q.metrics)
    if q.filters or extra is not None or not set(cols) <= set(AGG_METRICS):
        return None
    if q.dimensions == ("time:hour",) and rng.first.minute == rng.first.second == 0 and rng.end.minute == rng.end.second == 0:
        return "site_hour"
    if not rng.whole_days:
        return None
    multi_day = rng.days() > 1 or q.dimensions in (("time:week",), ("time:month",))
    if "visitors" in cols and multi_day and salt_period != "day" and q.dimensions != ("time:day",):
        return None
    if q.dimensions in ((), ("time:day",), ("time:week",), ("time:month",)):
        return "site_day"
    if q.dimensions == ("event:page",) and cols == ("pageviews",):
        return "path_day"
    return None


def rollup_dimension(q: StatsQuery, rng: Range, extra: Filter | None, salt_period: str) -> str | None:
    """The dimension whose daily rollups answer this query exactly (with the raw rows of
    the days without one), or None."""
    if not rng.whole_days or len(q.dimensions) != 1 or q.dimensions[0] not in ROLLUP_DIMENSIONS:
        return None
    if set(q.metrics) & set(SESSION_METRICS) or sessions_only(q.dimensions, q.filters):
        return None
    dim = q.dimensions[0]
    if any(dimensions_of(f) != {dim} for f in (*q.filters, *([extra] if extra is not None else []))):
        return None  # a filter on another dimension selects rows, not values
    if "visitors" in metric_columns(q.metrics) and salt_period != "day" and rng.days() > 1:
        return None
    return dim


# The (day, version) of each day whose rollup this query may use: its raw rows still have
# the fingerprint it was computed from (from the `day_prints` projection) and it was
# computed with the current vocabulary; before {kept}, where the raw rows expire, a sealed one.
USABLE_ROLLUPS = f"""
SELECT groupArray((day, version)) FROM
(
    SELECT day, version, raw_rows, raw_stamp, rules, sealed FROM daily_stats_log FINAL
    WHERE site = {{site:String}} AND day BETWEEN {{d0:Date}} AND {{d1:Date}}
)
WHERE (day < {{kept:Date}} AND sealed = 1) OR (day >= {{kept:Date}} AND rules = {{rules:String}} AND (day, raw_rows, raw_stamp) IN
(
    SELECT toDate(received_at) AS day, {ROWS}, {STAMP} FROM pageviews
    WHERE site = {{site:String}} AND toDate(received_at) BETWEEN {{d0:Date}} AND {{d1:Date}}
    GROUP BY day
))"""
# The days of the range without a usable rollup: their raw rows are read.
RAW_DAYS = ("SELECT day FROM (SELECT arrayJoin(arrayMap(i -> {d0:Date} + i, "
            "range(toUInt32(dateDiff('day', {d0:Date}, {d1:Date}) + 1)))) AS day) "
            "WHERE day NOT IN (SELECT arrayJoin(rolled).1)")


class Builder:
    def __init__(self, q: StatsQuery, salt_period: str = "day", kept: date | None = None,
                 goals: Goals | None = None) -> None:
        """kept: the first day whose raw rows all still exist (sinks/rollups.py kept_from;
        before it only sealed rollups are used, whatever vocabulary they were computed
        with); None: no rollups. goals: the site's, for a query on `event:goal`."""
        self.q = q
        self.salt_period = salt_period
        self.kept = kept
        self.goals = goals or Goals()
        self.params: dict[str, Any] = {}

    def param(self, value: Any, ptype: str) -> str:
        name = f"p{len(self.params)}"
        self.params[name] = value
        return f"{{{name}:{ptype}}}"

    def build(self, rng: Range, extra: Filter | None = None, totals: bool = False, paginate: bool = True,
              goal_filters: bool = True) -> Sql:
        """The query over `rng`, with `extra` ANDed to the filters. totals=True: the visitors
        of the whole filtered set, no dimensions (the denominator of `percentage`; with
        goal_filters=False, of `conversion_rate`: the goal filters taken as true)."""
        q = self.q
        if totals:
            filters = q.filters if goal_filters else tuple(f for f in map(without_goals, q.filters) if f is not None)
            q = replace(q, dimensions=(), metrics=("visitors",), filters=filters)
        extra = without_goals(extra)  # a comparison's goal values: matched by value afterwards
        dims = q.dimensions
        if set(q.metrics) & set(SESSION_METRICS) or sessions_only(self.q.dimensions, self.q.filters):
            return self.visits(q, rng, extra, paginate)
        if set(q.metrics) & set(ENGAGEMENT_METRICS):
            return self.engagement(q, rng, extra, paginate)
        kind = aggregate_kind(q, rng, extra, self.salt_period)
        self.params = {"site": q.site, "t0": _ts(rng.first), "t1": _ts(rng.end), "week_floor": str(rng.first_day)}
        cols = metric_columns(q.metrics)
        if kind is None and self.kept is not None and rollup_dimension(q, rng, extra, self.salt_period):
            return self.rollup(q, rng, extra, paginate)
        if kind is not None:
            time_col = "window_start"
            dim_sql = [("dimension" if d == "event:page" else TIME_FORMATS[d].format(c=time_col)) for d in dims]
            metric_sql = [AGG_METRICS[m] for m in cols]
            source = "aggregates FINAL"
            where = [f"kind = '{kind}'", "scope = {site:String}",
                     "window_start >= toDateTime64({t0:String}, 3, 'UTC')", "window_start < toDateTime64({t1:String}, 3, 'UTC')"]
        else:
            time_col = "received_at"
            goals = self.goal_names(q.filters) if uses_goals(dims, q.filters) else None
            dim_sql = [TIME_FORMATS[d].format(c=time_col) if d.startswith("time")
                       else f"arrayJoin({goals})" if d == "event:goal" else self.expr(d) for d in dims]
            metric_sql = [RAW_METRICS[m] for m in cols]
            source = "pageviews FINAL"
            where = ["site = {site:String}", "received_at >= toDateTime64({t0:String}, 3, 'UTC')",
                     "received_at < toDateTime64({t1:String}, 3, 'UTC')", COUNTED,
                     *([f"notEmpty({goals})"] if goals else [])]
            for f in (*q.filters, *([extra] if extra is not None else [])):
                if (rest := without_goals(f)) is not None:  # goal filters select goals (goal_names)
                    where.append(self.condition(rest))
        if not any(d == "time:week" for d in dims):
            self.params.pop("week_floor")
        select = [f"{sql} AS d{i}" for i, sql in enumerate(dim_sql)] + [f"toInt64({sql}) AS m_{m}" for m, sql in zip(cols, metric_sql, strict=True)]
        return self.finish(f"FROM {source} WHERE {' AND '.join(where)}", select, q, dims, cols, paginate)

    def finish(self, source: str, select: list[str], q: StatsQuery, dims: tuple[str, ...], cols: tuple[str, ...],
               paginate: bool, prefix: str = "") -> Sql:
        want_total = paginate and q.total_rows and bool(dims)
        if want_total:
            select.append("toInt64(count() OVER ()) AS total_rows")
        text = f"{prefix}SELECT {', '.join(select)} {source}"
        if dims:
            text += f" GROUP BY {', '.join(f'd{i}' for i in range(len(dims)))}"
            text += f" ORDER BY {self.order(dims, cols)}"
            if paginate:
                text += " LIMIT {limit:UInt64} OFFSET {offset:UInt64}"
                self.params.update(limit=q.limit, offset=q.offset)
        return Sql(text, dict(self.params), dims, cols, want_total)

    def rollup(self, q: StatsQuery, rng: Range, extra: Filter | None, paginate: bool) -> Sql:
        """A one-dimension breakdown: the usable daily rollups plus the raw rows of the other
        days, summed per value (exact: per-day visitors add up under the daily salt)."""
        dim = q.dimensions[0]
        cols = metric_columns(q.metrics)
        self.params.pop("week_floor")
        self.params.update(d0=str(rng.first_day), d1=str(rng.last_day), rules=RULES, kept=str(self.kept))
        filters = (*q.filters, *([extra] if extra is not None else []))
        rolled = ["value AS d0", *(f"{ROLLUP_METRICS[m]} AS m{i}" for i, m in enumerate(cols))]
        rolled_where = ["site = {site:String}", f"dimension = '{dim}'", "day BETWEEN {d0:Date} AND {d1:Date}",
                        "(day, version) IN (SELECT arrayJoin(rolled))", *(self.condition(f, "value") for f in filters)]
        raw = [f"{EXPRESSIONS[dim]} AS d0", *(f"{RAW_METRICS[m]} AS m{i}" for i, m in enumerate(cols))]
        raw_where = ["site = {site:String}", "received_at >= toDateTime64({t0:String}, 3, 'UTC')",
                     "received_at < toDateTime64({t1:String}, 3, 'UTC')", f"toDate(received_at) IN ({RAW_DAYS})",
                     COUNTED, *(self.condition(f) for f in filters)]
        source = (f"FROM (SELECT {', '.join(rolled)} FROM daily_stats WHERE {' AND '.join(rolled_where)} "
                  f"UNION ALL SELECT {', '.join(raw)} FROM pageviews FINAL WHERE {' AND '.join(raw_where)} GROUP BY d0)")
        select = ["d0", *(f"toInt64(sum(m{i})) AS m_{m}" for i, m in enumerate(cols))]
        return self.finish(source, select, q, q.dimensions, cols, paginate, f"WITH ({USABLE_ROLLUPS}) AS rolled ")

    def visits(self, q: StatsQuery, rng: Range, extra: Filter | None, paginate: bool) -> Sql:
        """Visit metrics from `sessions` FINAL (by session_start), with the event metrics from
        `pageviews` FINAL unless the query is about entry or exit pages, summed per value."""
        dims, cols = q.dimensions, metric_columns(q.metrics)
        self.params = {"site": q.site, "t0": _ts(rng.first), "t1": _ts(rng.end), "week_floor": str(rng.first_day)}
        if "time:week" not in dims:
            self.params.pop("week_floor")
        filters = (*q.filters, *([extra] if extra is not None else []))
        parts, visits_only = [], sessions_only(self.q.dimensions, self.q.filters)
        events = not visits_only and bool(set(cols) - set(SESSION_METRICS))
        if events:
            parts.append(self.part(0, "pageviews", "received_at", EVENT_EXPRESSIONS, dims, filters))
        if visits_only or set(cols) & set(SESSION_METRICS):  # the event sums from the event part, if any
            sums = {k: ("-", "-") if events and k in RAW_METRICS else v for k, v in PARTS.items()}
            parts.append(self.part(1, "sessions", "session_start", SESSION_EXPRESSIONS, dims, filters, sums))
        select = [f"d{i}" for i in range(len(dims))] + [f"{VISIT_METRICS[m]} AS m_{m}" for m in cols]
        return self.finish(f"FROM ({' UNION ALL '.join(parts)})", select, q, dims, cols, paginate)

    def part(self, side: int, table: str, time_col: str, exprs: dict[str, str], dims: tuple[str, ...],
             filters: tuple[Filter, ...], sums: dict[str, tuple[str, str]] = PARTS) -> str:
        """One side of a visits query: its dimensions and every partial sum (0 where it has none)."""
        dim_sql = [TIME_FORMATS[d].format(c=time_col) if d.startswith("time") else self.expr(d, exprs) for d in dims]
        select = [f"{sql} AS d{i}" for i, sql in enumerate(dim_sql)]
        select += [f"toUInt64({'0' if pair[side] == '-' else pair[side]}) AS p_{name}" for name, pair in sums.items()]
        where = [f"site = {{site:String}} AND {time_col} >= toDateTime64({{t0:String}}, 3, 'UTC') "
                 f"AND {time_col} < toDateTime64({{t1:String}}, 3, 'UTC')", "deleted = 0" if side else COUNTED,
                 *(self.condition(f, exprs=exprs) for f in filters)]
        group = f" GROUP BY {', '.join(f'd{i}' for i in range(len(dims)))}" if dims else ""
        return f"SELECT {', '.join(select)} FROM {table} FINAL WHERE {' AND '.join(where)}{group}"

    def engagement(self, q: StatsQuery, rng: Range, extra: Filter | None, paginate: bool) -> Sql:
        """Time on page and scroll depth from the engagement events (with any event metrics
        from the other rows), summed per dimension value. A page visit is a (visit, page):
        each engagement event belongs to the visit of its visitor that started last before
        it (ASOF JOIN on `sessions`; with sessions off, the visitor's whole period)."""
        dims, cols = q.dimensions, metric_columns(q.metrics)
        self.params = {"site": q.site, "t0": _ts(rng.first), "t1": _ts(rng.end), "week_floor": str(rng.first_day)}
        if "time:week" not in dims:
            self.params.pop("week_floor")
        filters = (*q.filters, *([extra] if extra is not None else []))
        dim_sql = [TIME_FORMATS[d].format(c="received_at") if d.startswith("time") else self.expr(d) for d in dims]
        where = ["site = {site:String}", "received_at >= toDateTime64({t0:String}, 3, 'UTC')",
                 "received_at < toDateTime64({t1:String}, 3, 'UTC')", *(self.condition(f) for f in filters)]
        ds = [f"d{i}" for i in range(len(dims))]
        group = f" GROUP BY {', '.join(ds)}" if dims else ""

        def sums(**given: str) -> str:
            return ", ".join(f"toUInt64({given.get(name, '0')}) AS p_{name}" for name in ENGAGEMENT_PARTS)

        parts = []
        if set(cols) - set(ENGAGEMENT_METRICS):
            rows = ", ".join([*(f"{sql} AS d{i}" for i, sql in enumerate(dim_sql)), sums(
                visitors="uniqExact(visitor_id)", pageviews="countIf(event = 'pageview')", events="count()")])
            parts.append(f"SELECT {rows} FROM pageviews FINAL WHERE {' AND '.join([*where, COUNTED])}{group}")
        sd, ms = f"'{SCROLL_DEPTH}'", f"'{ENGAGED_MS}'"
        events = ", ".join([*(f"{sql} AS d{i}" for i, sql in enumerate(dim_sql)), "path", "visitor_id", "received_at",
                            f"toUInt64OrZero(props[{ms}]) AS ms", f"mapContains(props, {sd}) AS scrolled",
                            f"toUInt64OrZero(props[{sd}]) AS depth"])
        visits = ("SELECT visitor_id, session_start FROM sessions FINAL WHERE site = {site:String} AND deleted = 0 "
                  "AND session_start >= toDateTime64({t0:String}, 3, 'UTC') - INTERVAL 1 DAY "
                  "AND session_start < toDateTime64({t1:String}, 3, 'UTC')")
        per_page = ", ".join([*ds, "sum(e.ms) AS ms", "uniqExact(s.session_start) AS visits",
                              "maxIf(e.depth, e.scrolled) AS depth", "max(e.scrolled) AS scrolled"])
        per_visitor = (f"SELECT {per_page} FROM (SELECT {events} FROM pageviews FINAL WHERE "
                       f"{' AND '.join([*where, ENGAGED])}) AS e "
                       f"ASOF LEFT JOIN ({visits}) AS s ON e.visitor_id = s.visitor_id AND e.received_at >= s.session_start "
                       f"GROUP BY {', '.join([*ds, 'e.path', 'e.visitor_id'])}")
        engaged = sums(engaged_ms="sum(ms)", page_visits="sum(visits)", scroll_sum="sumIf(depth, scrolled)",
                       scrolls="countIf(scrolled)")
        parts.append(f"SELECT {', '.join([*ds, engaged])} FROM ({per_visitor}){group}")
        metric = {**{m: f"toInt64(sum(p_{m}))" for m in RAW_METRICS}, **ENGAGEMENT_SQL}
        select = [*ds, *(f"{metric[m]} AS m_{m}" for m in cols)]
        return self.finish(f"FROM ({' UNION ALL '.join(parts)})", select, q, dims, cols, paginate)

    def expr(self, dimension: str, exprs: dict[str, str] = EVENT_EXPRESSIONS) -> str:
        """The SQL of a dimension over a row; a custom property's name travels as a parameter."""
        if is_props(dimension):
            key = self.param(dimension[len(PROPS):], "String")
            return f"if(props[{key}] = '', '(none)', props[{key}])"
        return exprs[dimension]

    def goal_names(self, filters: tuple[Filter, ...]) -> str:
        """SQL: the names of the site's goals a row converts that pass the query's goal filters."""
        names = converted(self.param, self.goals)
        for leaf in (leaf for f in filters for leaf in goal_leaves(f)):
            names = f"arrayFilter(g -> {self.condition(leaf, 'g')}, {names})"
        return names

    def order(self, dims: tuple[str, ...], cols: tuple[str, ...]) -> str:
        terms, used = [], set()
        for key, direction in self.q.order_by:
            if key in dims:
                alias = f"d{dims.index(key)}"
            else:
                alias = f"m_{'visitors' if key in RATIOS else key}"
                if alias[2:] not in cols:
                    continue
            if alias not in used:
                used.add(alias)
                terms.append(f"{alias} {direction.upper()}")
        terms += [f"d{i} ASC" for i in range(len(dims)) if f"d{i}" not in used]  # a stable order for ties
        return ", ".join(terms)

    def condition(self, f: Filter, column: str | None = None, exprs: dict[str, str] = EVENT_EXPRESSIONS) -> str:
        """The filter as SQL over a row (`pageviews` unless `exprs` says otherwise), or over
        `column` (a rollup's value)."""
        if isinstance(f, Branch):
            parts = [self.condition(c, column, exprs) for c in f.children]
            if f.op == "not":
                return f"NOT ({parts[0]})"
            return "(" + f" {f.op.upper()} ".join(parts) + ")"
        expr = column or self.expr(f.dimension, exprs)
        clauses = list(f.clauses)
        if not f.case_sensitive:
            expr, clauses = f"lowerUTF8({expr})", [c.lower() for c in clauses]
        values = self.param(clauses, "Array(String)")
        positive = f.op in ("is", "contains", "matches")
        if f.op in ("is", "is_not"):
            test = f"{expr} IN {values}"
        elif f.op in ("contains", "contains_not"):
            test = f"multiSearchAnyUTF8({expr}, {values})"
        else:
            test = f"arrayExists(pattern -> match({expr}, pattern), {values})"
        return test if positive else f"NOT ({test})"


def _ts(value: Any) -> str:
    return value.strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]


def realtime_sql() -> Sql:
    """Plausible's realtime visitors: unique visitors of the last 5 minutes."""
    return Sql("SELECT toInt64(uniqExact(visitor_id)) FROM pageviews WHERE site = {site:String} "
               f"AND received_at >= now64(3, 'UTC') - INTERVAL 5 MINUTE AND {COUNTED}", {})


def first_day_sql() -> Sql:
    """The site's first day with data, for date_range "all" (from the small aggregates table)."""
    return Sql("SELECT toString(min(toDate(window_start))), count() FROM aggregates "
               "WHERE kind = 'site_day' AND scope = {site:String}", {})
