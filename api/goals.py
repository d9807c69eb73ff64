"""Goals in the Stats API: a site's goals as query parameters, and which of them a row converts.

A row converts an event goal when its event has the goal's name, and a page goal when it is
a pageview whose path matches the goal's pattern in full: `*` is any run of characters
within one path segment (no `/`), `**` any run at all, everything else literal (so
`/blog/*` is every post and `/blog/**` everything under /blog). A pattern becomes an RE2
regular expression here and travels as a query parameter, never in the SQL text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from tally.api.request import Branch, Filter, Leaf, RequestError
from tally.sinks.goalstore import GoalRecord

DIMENSION = "event:goal"
REGEX_SPECIAL = frozenset("\\.^$|?*+()[]{}")
# A site's live goals, through the guarded SQL path (the table is an analyst table).
GOALS_SQL = ("SELECT name, kind, value FROM goals FINAL WHERE site = {site:String} AND deleted_at IS NULL "
             "ORDER BY created_at, goal_id")


def page_regex(pattern: str) -> str:
    """The RE2 expression a page pattern stands for, anchored at both ends."""
    out = []
    for token in re.split(r"(\*\*|\*)", pattern):
        if token == "**":
            out.append(".*")
        elif token == "*":
            out.append("[^/]*")
        else:
            out.append("".join("\\" + c if c in REGEX_SPECIAL else c for c in token))
    return "^" + "".join(out) + "$"


@dataclass(frozen=True)
class Goals:
    """One site's goals, in parallel arrays: the SQL indexes them together."""

    names: tuple[str, ...] = ()
    events: tuple[str, ...] = ()  # an event goal's event name; '' for a page goal
    regexes: tuple[str, ...] = ()  # a page goal's expression; '' for an event goal

    @classmethod
    def of(cls, rows: list[list[Any]] | list[GoalRecord]) -> Goals:
        """From GOALS_SQL's rows (name, kind, value) or from records."""
        triples = [(g.name, g.kind, g.value) if isinstance(g, GoalRecord) else tuple(g) for g in rows]
        return cls(tuple(n for n, _, _ in triples), tuple(v if k == "event" else "" for _, k, v in triples),
                   tuple(page_regex(v) if k == "page" else "" for _, k, v in triples))


def uses_goals(dimensions: tuple[str, ...], filters: tuple[Filter, ...]) -> bool:
    return DIMENSION in dimensions or any(goal_leaves(f) for f in filters)


def goal_leaves(f: Filter) -> list[Leaf]:
    if isinstance(f, Branch):
        return [leaf for c in f.children for leaf in goal_leaves(c)]
    return [f] if f.dimension == DIMENSION else []


def without_goals(f: Filter | None) -> Filter | None:
    """The filter with its goal conditions taken as true: what the denominator of
    conversion_rate and percentage counts (Plausible's totals), and a comparison's
    restriction to the main page's values (a superset; rows are matched by value after)."""
    if f is None or isinstance(f, Leaf):
        return None if f is None or f.dimension == DIMENSION else f
    children = [without_goals(c) for c in f.children]
    if f.op == "or" and any(c is None for c in children):
        return None
    kept = tuple(c for c in children if c is not None)
    if not kept:
        return None
    if f.op == "not":  # goal leaves are top-level only (request.py), so a `not` keeps its child
        return Branch("not", kept)
    return kept[0] if len(kept) == 1 else Branch(f.op, kept)


def check_configured(filters: tuple[Filter, ...], goals: Goals) -> None:
    """Plausible's check: an `is` goal filter names configured goals only."""
    for i, f in enumerate(filters):
        for leaf in goal_leaves(f):
            if leaf.op != "is":
                continue
            names = goals.names if leaf.case_sensitive else tuple(n.lower() for n in goals.names)
            for clause in leaf.clauses:
                if (clause if leaf.case_sensitive else clause.lower()) not in names:
                    raise RequestError(f"#/filters/{i}: Invalid filters. The goal `{clause}` is not configured "
                                       "for this site (`tally goals list`).")


def converted(param: Any, goals: Goals) -> str:
    """SQL over a `pageviews` row: the names of the goals it converts, as an Array(String).
    `param(value, type)` adds a query parameter and gives its placeholder."""
    names = param(list(goals.names), "Array(String)")
    events = param(list(goals.events), "Array(String)")
    regexes = param(list(goals.regexes), "Array(String)")
    hit = (f"if(empty({regexes}[i]), event = {events}[i], event = 'pageview' AND match(path, {regexes}[i]))")
    return f"arrayMap(i -> {names}[i], arrayFilter(i -> {hit}, arrayEnumerate({names})))"
