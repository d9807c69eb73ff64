"""Plausible's Stats API v2 request (`POST /api/v2/query`), parsed once into a typed query.

Validation follows Plausible's query parser: the same fields, defaults and error
messages, each naming the bad field by its JSON pointer (`#/metrics/1: Invalid
metric "baa"`). What Plausible accepts but Tally cannot answer yet (regions, ...)
is a 400 that names the metric or dimension, and so is a combination Tally cannot
answer exactly (a visit metric with a per-event dimension such as `event:page`).
All dates are UTC days: Tally has no per-site time zone.
"""

from __future__ import annotations

import calendar
import re
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from tally.schemas.engagement import RESERVED_PREFIX
from tally.sinks.vocabulary import EVENT_ONLY

# Metrics of visits (sessions), read from the `sessions` table.
SESSION_METRICS = ("visits", "bounce_rate", "visit_duration", "views_per_visit")
# Metrics of page views, read from their engagement events (tally.schemas.engagement).
ENGAGEMENT_METRICS = ("time_on_page", "scroll_depth")
METRICS = ("visitors", "pageviews", "events", "percentage", "conversion_rate", *SESSION_METRICS, *ENGAGEMENT_METRICS)
# Plausible metrics Tally does not answer yet.
LATER_METRICS = ("group_conversion_rate", "total_revenue", "average_revenue", "exit_rate")
TIME_DIMENSIONS = ("time", "time:hour", "time:day", "time:week", "time:month")
# Dimensions of single events: a visit has many pages and event names, so visit metrics
# cannot be broken down or filtered by them.
EVENT_DIMENSIONS = ("event:page", "event:name", "event:hostname", "event:goal")
# Dimensions only a visit has: a query with one of them reads the `sessions` table only.
SESSION_DIMENSIONS = ("visit:entry_page", "visit:exit_page")
DIMENSIONS = (*EVENT_DIMENSIONS, "visit:source", "visit:referrer", "visit:utm_source", "visit:utm_medium",
              "visit:utm_campaign", "visit:utm_content", "visit:utm_term", "visit:browser", "visit:os", "visit:device",
              "visit:screen", "visit:country", *SESSION_DIMENSIONS, *TIME_DIMENSIONS)
# Plausible dimensions Tally keeps no data for (no regions or cities, ...).
LATER_DIMENSIONS = ("visit:channel",
                    "visit:browser_version", "visit:os_version", "visit:region", "visit:city",
                    "visit:country_name", "visit:region_name", "visit:city_name",
                    "visit:entry_page_hostname", "visit:exit_page_hostname", "time:minute")
PROPS = "event:props:"  # event:props:<key>: a custom property's value, `(none)` without it
FILTER_OPERATORS = ("is", "is_not", "contains", "contains_not", "matches", "matches_not")
SHORTHANDS = ("day", "7d", "28d", "30d", "91d", "month", "6mo", "12mo", "year", "all")
TOP_LEVEL = ("site_id", "metrics", "date_range", "dimensions", "filters", "order_by", "include", "pagination")
MAX_LIMIT = 10_000


class RequestError(ValueError):
    """A bad request; `str()` is Plausible's message, naming the field."""


def _i(value: Any) -> str:
    """A value as Plausible's messages quote it."""
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list):
        return "[" + ", ".join(_i(v) for v in value) + "]"
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "%{" + ", ".join(f"{_i(k)} => {_i(v)}" for k, v in value.items()) + "}"
    return str(value)


@dataclass(frozen=True)
class Leaf:
    op: str
    dimension: str
    clauses: tuple[str, ...]
    case_sensitive: bool = True


@dataclass(frozen=True)
class Branch:
    op: str  # and, or, not
    children: tuple[Filter, ...]


Filter = Leaf | Branch


@dataclass(frozen=True)
class Range:
    """A UTC time range: first instant included, last instant excluded."""

    first: datetime
    end: datetime

    @property
    def first_day(self) -> date:
        return self.first.date()

    @property
    def last_day(self) -> date:
        return (self.end - timedelta(microseconds=1)).date()

    @property
    def whole_days(self) -> bool:
        return self.first.time() == time(0) and self.end.time() == time(0)

    def days(self) -> int:
        return (self.last_day - self.first_day).days + 1

    @classmethod
    def of_days(cls, first: date, last: date) -> Range:
        return cls(datetime.combine(first, time(0), UTC), datetime.combine(last + timedelta(days=1), time(0), UTC))


@dataclass(frozen=True)
class StatsQuery:
    site: str
    metrics: tuple[str, ...]
    range: Range
    dimensions: tuple[str, ...] = ()
    filters: tuple[Filter, ...] = ()
    order_by: tuple[tuple[str, str], ...] = ()
    time_labels: bool = False
    total_rows: bool = False
    comparison: str | None = None  # previous_period or year_over_year
    match_day_of_week: bool = False
    limit: int = MAX_LIMIT
    offset: int = 0
    raw: dict[str, Any] = field(default_factory=dict, compare=False)  # the request as given

    @property
    def time_dimension(self) -> str | None:
        return next((d for d in self.dimensions if d.startswith("time")), None)


def _month_shift(d: date, months: int) -> date:
    """The first day of the month `months` away from d's month."""
    index = d.year * 12 + d.month - 1 + months
    return date(index // 12, index % 12 + 1, 1)


def _month_end(d: date) -> date:
    return date(d.year, d.month, calendar.monthrange(d.year, d.month)[1])


def parse_date_range(value: Any, today: date, first_day: date | None) -> Range:
    """Plausible's date_range, relative to `today` (UTC). `first_day`: the site's first day
    with data, for "all"."""
    if isinstance(value, str):
        if value == "day":
            return Range.of_days(today, today)
        if value == "month":
            return Range.of_days(today.replace(day=1), _month_end(today))
        if value == "year":
            return Range.of_days(date(today.year, 1, 1), date(today.year, 12, 31))
        if value == "all":
            return Range.of_days(min(first_day or today, today), today)
        m = re.fullmatch(r"([1-9]\d{0,3})(d|mo)", value)
        if m and m[2] == "d":
            n = int(m[1])
            return Range.of_days(today - timedelta(days=n), today - timedelta(days=1))
        if m and int(m[1]) <= 100:
            n = int(m[1])
            return Range.of_days(_month_shift(today, -n), _month_end(_month_shift(today, -1)))
    elif isinstance(value, list) and len(value) == 2 and all(isinstance(v, str) for v in value):
        try:
            first, last = date.fromisoformat(value[0]), date.fromisoformat(value[1])
            if len(value[0]) == 10 and len(value[1]) == 10:
                if last < first:
                    raise RequestError(f"#/date_range: Invalid date range {_i(value)}: the end is before the start")
                return Range.of_days(first, last)
        except ValueError:
            pass
        try:
            first_t, last_t = (datetime.fromisoformat(v.replace("Z", "+00:00")) for v in value)
        except ValueError:
            raise RequestError(f"#/date_range: Invalid date range {_i(value)}") from None
        if first_t.tzinfo is None or last_t.tzinfo is None:
            raise RequestError(f"#/date_range: Invalid date range {_i(value)}: timestamps need a UTC offset")
        first_t, last_t = first_t.astimezone(UTC), last_t.astimezone(UTC)
        if last_t < first_t:
            raise RequestError(f"#/date_range: Invalid date range {_i(value)}: the end is before the start")
        return Range(first_t, last_t + timedelta(seconds=1))  # Plausible's last second is included
    raise RequestError(f"#/date_range: Invalid date range {_i(value)}")


def _list(body: dict[str, Any], key: str) -> list[Any]:
    value = body.get(key, [])
    if not isinstance(value, list):
        raise RequestError(f"#/{key}: Type mismatch. Expected Array but got {type(value).__name__.replace('dict', 'Object').replace('str', 'String')}.")
    return value


def _unique(values: list[Any], key: str) -> None:
    seen = []
    for v in values:
        if v in seen:
            raise RequestError(f"#/{key}: Expected items to be unique but they were not.")
        seen.append(v)


def parse_metrics(values: list[Any]) -> tuple[str, ...]:
    if not values:
        raise RequestError("#/metrics: Expected a minimum of 1 items but got 0.")
    _unique(values, "metrics")
    for i, m in enumerate(values):
        if m in LATER_METRICS:
            raise RequestError(f"#/metrics/{i}: Metric `{m}` is not supported by Tally yet (supported: {', '.join(METRICS)})")
        if m not in METRICS:
            raise RequestError(f"#/metrics/{i}: Invalid metric {_i(m)}")
    return tuple(values)


def is_props(dimension: Any) -> bool:
    return isinstance(dimension, str) and dimension.startswith(PROPS)


def is_event_dimension(dimension: str) -> bool:
    """A dimension of single events (a visit has many values of it), or one only events keep
    (visit:screen, a prop of each event: `sessions` rows do not carry it)."""
    return dimension in EVENT_DIMENSIONS or dimension in EVENT_ONLY or is_props(dimension)


def _props_problem(d: str) -> str | None:
    key = d[len(PROPS):]
    if not key:
        return "needs a property name"
    if key.startswith(RESERVED_PREFIX):
        return f"names a reserved property (names starting with {RESERVED_PREFIX!r})"
    return None


def parse_dimensions(values: list[Any]) -> tuple[str, ...]:
    _unique(values, "dimensions")
    for i, d in enumerate(values):
        if d in LATER_DIMENSIONS:
            raise RequestError(f"#/dimensions/{i}: Dimension `{d}` is not supported by Tally yet "
                               f"(supported: {', '.join(DIMENSIONS)}, {PROPS}<key>)")
        if is_props(d) and (problem := _props_problem(d)):
            raise RequestError(f"#/dimensions/{i}: Invalid dimension {_i(d)}: {problem}")
        if d not in DIMENSIONS and not is_props(d):
            raise RequestError(f"#/dimensions/{i}: Invalid dimension {_i(d)}")
    if sum(1 for d in values if d.startswith("time")) > 1:
        raise RequestError("#/dimensions: Only one time dimension can be queried at a time.")
    return tuple(values)


def parse_filter(value: Any, path: str, depth: int = 0) -> Filter:
    if not isinstance(value, list) or not value or not isinstance(value[0], str):
        raise RequestError(f"{path}: Invalid filter {_i(value)}")
    op = value[0]
    if op in ("and", "or"):
        if len(value) != 2 or not isinstance(value[1], list) or not value[1]:
            raise RequestError(f"{path}: Invalid filter {_i(value)}")
        return Branch(op, tuple(parse_filter(v, f"{path}/1/{i}", depth + 1) for i, v in enumerate(value[1])))
    if op == "not":
        if len(value) != 2:
            raise RequestError(f"{path}: Invalid filter {_i(value)}")
        return Branch(op, (parse_filter(value[1], f"{path}/1", depth + 1),))
    if op in ("has_done", "has_not_done", "matches_wildcard", "matches_wildcard_not"):
        raise RequestError(f"{path}: Filter operator `{op}` is not supported by Tally")
    if op not in FILTER_OPERATORS or len(value) not in (3, 4):
        raise RequestError(f"{path}: Invalid filter {_i(value)}")
    dimension, clauses = value[1], value[2]
    if dimension in LATER_DIMENSIONS:
        raise RequestError(f"{path}/1: Filtering on `{dimension}` is not supported by Tally yet")
    if is_props(dimension) and (problem := _props_problem(dimension)):
        raise RequestError(f"{path}/1: Invalid filter dimension {_i(dimension)}: {problem}")
    if (dimension not in DIMENSIONS and not is_props(dimension)) or dimension.startswith("time"):
        raise RequestError(f"{path}: Invalid filter {_i(value)}")
    if dimension in ("event:hostname", "event:goal") and depth > 0:
        raise RequestError(f"#/filters: Invalid filters. Dimension `{dimension}` can only be filtered at the top level.")
    if dimension == "event:goal" and op not in ("is", "contains"):
        raise RequestError(f"{path}: Filter operator `{op}` is not supported on `event:goal` (use is or contains)")
    if not isinstance(clauses, list) or not clauses or not all(isinstance(c, str) for c in clauses):
        raise RequestError(f"{path}/2: Invalid filter {_i(value)}: clauses must be a non-empty list of strings")
    case_sensitive = True
    if len(value) == 4:
        mods = value[3]
        if not isinstance(mods, dict) or set(mods) - {"case_sensitive"} or not isinstance(mods.get("case_sensitive", True), bool):
            raise RequestError(f"{path}/3: Invalid filter modifiers {_i(mods)}: only {{\"case_sensitive\": true|false}}")
        case_sensitive = mods.get("case_sensitive", True)
    return Leaf(op, dimension, tuple(clauses), case_sensitive)


def parse_order_by(value: Any, metrics: tuple[str, ...], dimensions: tuple[str, ...]) -> tuple[tuple[str, str], ...] | None:
    if value is None:
        return None
    if not isinstance(value, list):
        raise RequestError(f"#/order_by: Invalid order_by {_i(value)}.")
    out = []
    for i, entry in enumerate(value):
        if (not isinstance(entry, list) or len(entry) != 2 or entry[1] not in ("asc", "desc")
                or (entry[0] not in (*METRICS, *DIMENSIONS) and not is_props(entry[0]))):
            raise RequestError(f"#/order_by/{i}: Invalid order_by entry {_i(entry)}.")
        if entry[0] not in metrics and entry[0] not in dimensions:
            raise RequestError(f"#/order_by/{i}: Invalid order_by entry {_i(entry)}. Entry is not a queried metric or dimension.")
        out.append((entry[0], entry[1]))
    return tuple(out)


def dimensions_of(f: Filter) -> set[str]:
    return set().union(*(dimensions_of(c) for c in f.children)) if isinstance(f, Branch) else {f.dimension}


def sessions_only(dimensions: tuple[str, ...], filters: tuple[Filter, ...]) -> bool:
    """Whether the query breaks down or filters by what only a visit has (entry or exit
    page): then every metric is a visit's (docs/api.md)."""
    used = set(dimensions).union(*(dimensions_of(f) for f in filters))
    return bool(used & set(SESSION_DIMENSIONS))


def check_engagement(metrics: tuple[str, ...], dimensions: tuple[str, ...], filters: tuple[Filter, ...]) -> None:
    """Time on page and scroll depth are figures of page views: they go with event metrics and
    with the dimensions an engagement event has (its page, hostname, source, device, ...,
    time), never with visit metrics, entry or exit pages, event names or custom properties."""
    engaged = [(i, m) for i, m in enumerate(metrics) if m in ENGAGEMENT_METRICS]
    if not engaged:
        return
    i, m = engaged[0]
    for j, other in enumerate(metrics):
        if other in SESSION_METRICS:
            raise RequestError(f"#/metrics/{i}: Metric `{m}` cannot be queried with the visit metric `{other}` "
                               f"(#/metrics/{j})")
    used = [(f"#/dimensions/{j}", "the dimension", d) for j, d in enumerate(dimensions)]
    used += [(f"#/filters/{j}", "a filter on", d) for j, f in enumerate(filters) for d in sorted(dimensions_of(f))]
    for where, how, d in used:
        if d in SESSION_DIMENSIONS or d == "event:name" or d in EVENT_ONLY or is_props(d):
            raise RequestError(f"#/metrics/{i}: Metric `{m}` cannot be queried with {how} `{d}` ({where}): "
                               "it is a figure of page views, read from their engagement events")


def check_combination(metrics: tuple[str, ...], dimensions: tuple[str, ...], filters: tuple[Filter, ...]) -> None:
    """Visit metrics and visit-only dimensions cannot meet a dimension of single events:
    Tally answers those exactly or not at all (a 400 naming both)."""
    check_engagement(metrics, dimensions, filters)
    per_event = [(f"#/dimensions/{i}", "the dimension", d) for i, d in enumerate(dimensions) if is_event_dimension(d)]
    per_event += [(f"#/filters/{i}", "a filter on", d) for i, f in enumerate(filters)
                  for d in sorted(dimensions_of(f)) if is_event_dimension(d)]
    if not per_event:
        return
    where, how, dim = per_event[0]
    why = ("the width class is a prop of each event, which visits do not keep" if dim in EVENT_ONLY
           else "a visit has many pages and events")
    for i, m in enumerate(metrics):
        if m in SESSION_METRICS:
            raise RequestError(f"#/metrics/{i}: Metric `{m}` cannot be queried with {how} `{dim}` ({where}): "
                               f"Tally counts it per visit, and {why}")
    visit_only = [d for d in dimensions if d in SESSION_DIMENSIONS]
    visit_only += sorted(d for f in filters for d in dimensions_of(f) if d in SESSION_DIMENSIONS)
    if visit_only:
        raise RequestError(f"{where}: `{dim}` cannot be combined with `{visit_only[0]}`: "
                           "a visit has one entry and one exit page but many pages and events")


def resolve_time(r: Range) -> str:
    """Plausible's `time` dimension: the bucket that fits the range."""
    hours = (r.end - r.first).total_seconds() / 3600
    if hours <= 49:
        return "time:hour"
    if hours / 24 <= 41:
        return "time:day"
    if hours / 24 / 7 <= 53:
        return "time:week"
    return "time:month"


def parse_request(body: Any, today: date, first_day: date | None = None) -> StatsQuery:
    if not isinstance(body, dict):
        raise RequestError("#: Type mismatch. Expected Object.")
    missing = [k for k in ("site_id", "metrics", "date_range") if k not in body]
    if missing:
        raise RequestError(f"#: Required properties {', '.join(missing)} were not present.")
    for key in body:
        if key not in TOP_LEVEL:
            raise RequestError(f"#/{key}: Schema does not allow additional properties.")
    if not isinstance(body["site_id"], str) or not body["site_id"]:
        raise RequestError("#/site_id: Type mismatch. Expected String.")
    metrics = parse_metrics(_list(body, "metrics"))
    dimensions = parse_dimensions(_list(body, "dimensions"))
    rng = parse_date_range(body["date_range"], today, first_day)
    filters = tuple(parse_filter(f, f"#/filters/{i}") for i, f in enumerate(_list(body, "filters")))
    check_combination(metrics, dimensions, filters)
    if "conversion_rate" in metrics and "event:goal" not in dimensions \
            and not any("event:goal" in dimensions_of(f) for f in filters):
        raise RequestError(f"#/metrics/{metrics.index('conversion_rate')}: Metric `conversion_rate` can only be "
                           "queried with event:goal filters or dimensions.")
    if "time" in dimensions:
        dimensions = tuple(resolve_time(rng) if d == "time" else d for d in dimensions)
    order_raw = body.get("order_by")
    if isinstance(order_raw, list):
        order_raw = [[resolve_time(rng) if isinstance(e, list) and e and e[0] == "time" else e[0], *e[1:]]
                     if isinstance(e, list) and e else e for e in order_raw]
    order_by = parse_order_by(order_raw, metrics, dimensions)
    if order_by is None:
        first = (metrics[0] if metrics[0] != "percentage" else "visitors", "desc")
        time_dim = next((d for d in dimensions if d.startswith("time")), None)
        order_by = ((time_dim, "asc"), first) if time_dim else (first,)
    include = body.get("include", {})
    if not isinstance(include, dict):
        raise RequestError(f"#/include: Invalid include {_i(include)}.")
    for key in include:
        if key not in ("time_labels", "total_rows", "comparisons", "imports"):
            raise RequestError(f"#/include/{key}: Schema does not allow additional properties.")
    for key in ("time_labels", "total_rows", "imports"):
        if key in include and not isinstance(include[key], bool):
            raise RequestError(f"#/include/{key}: Type mismatch. Expected Boolean.")
    if include.get("time_labels") and not any(d.startswith("time") for d in dimensions):
        raise RequestError("#/include/time_labels: Invalid include.time_labels: requires a time dimension.")
    comparison, match_dow = None, False
    if include.get("comparisons") is not None:
        comp = include["comparisons"]
        if not isinstance(comp, dict) or comp.get("mode") not in ("previous_period", "year_over_year") \
                or set(comp) - {"mode", "match_day_of_week"} or not isinstance(comp.get("match_day_of_week", False), bool):
            raise RequestError(f"#/include/comparisons: Invalid comparisons {_i(comp)}: "
                               '{"mode": "previous_period" | "year_over_year", "match_day_of_week": true | false}')
        comparison, match_dow = comp["mode"], comp.get("match_day_of_week", False)
    pagination = body.get("pagination", {})
    if not isinstance(pagination, dict):
        raise RequestError("#/pagination: Type mismatch. Expected Object.")
    for key in pagination:
        if key not in ("limit", "offset"):
            raise RequestError(f"#/pagination/{key}: Schema does not allow additional properties.")
    limit, offset = pagination.get("limit", MAX_LIMIT), pagination.get("offset", 0)
    if not isinstance(limit, int) or isinstance(limit, bool) or not 1 <= limit <= MAX_LIMIT:
        raise RequestError(f"#/pagination/limit: Expected the value to be an integer from 1 to {MAX_LIMIT}.")
    if not isinstance(offset, int) or isinstance(offset, bool) or offset < 0:
        raise RequestError("#/pagination/offset: Expected the value to be an integer >= 0.")
    return StatsQuery(body["site_id"], metrics, rng, dimensions, filters, order_by,
                      bool(include.get("time_labels")), bool(include.get("total_rows")), comparison, match_dow,
                      limit, offset, raw=body)
