"""Named reports of `tally query`: read-only SQL over the analysts' views.

Each report is one SELECT; values are rendered as quoted literals (the SQL
still runs in a read-only session, so quoting is about correctness, not the
safety net).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date

from tally.sinks.sql import quote


def literal(value: str | date | int) -> str:
    if isinstance(value, int):
        return str(value)
    return quote(value.isoformat() if isinstance(value, date) else str(value))


@dataclass(frozen=True)
class Window:
    date_from: date
    date_to: date

    def __post_init__(self) -> None:
        if self.date_to < self.date_from:
            raise ValueError(f"--to ({self.date_to}) is before --from ({self.date_from})")

    def args(self) -> str:
        return f"date_from = {literal(self.date_from)}, date_to = {literal(self.date_to)}"


def stats_sql(site: str, w: Window) -> str:
    """Daily pageviews and visitors of one site, from the aggregates; every day of the
    window is listed (WITH FILL), a day without traffic shows 0."""
    lo, hi = literal(w.date_from), literal(w.date_to)
    return (
        "SELECT day, pageviews, visitors FROM site_stats_daily\n"
        f"WHERE site = {literal(site)} AND day BETWEEN {lo} AND {hi}\n"
        f"ORDER BY day WITH FILL FROM toDate({lo}) TO toDate({hi}) + 1"
    )


def top_pages_sql(site: str, w: Window, limit: int) -> str:
    return f"SELECT * FROM top_pages(site = {literal(site)}, {w.args()}) LIMIT {int(limit)}"


def sources_sql(site: str, w: Window, limit: int) -> str:
    return f"SELECT * FROM top_sources(site = {literal(site)}, {w.args()}) LIMIT {int(limit)}"


TECH_VIEWS = {"browsers": "top_browsers", "os": "top_operating_systems", "devices": "top_devices"}


def technology_sql(kind: str, site: str, w: Window, limit: int) -> str:
    return f"SELECT * FROM {TECH_VIEWS[kind]}(site = {literal(site)}, {w.args()}) LIMIT {int(limit)}"


def adoption_sql(w: Window, tenant: str | None = None) -> str:
    if tenant is not None:
        return f"SELECT * FROM adoption_by_tenant(tenant = {literal(tenant)}, {w.args()})"
    return f"SELECT * FROM adoption_summary({w.args()})"


def catalog_report_sql(w: Window, events: list[tuple[str, str]]) -> str:
    """Catalog health (`tally catalog report`): per catalog event (name, lifecycle status),
    its volume and last sighting in the window, the records rejected for it by reason, and
    whether it never fired. Rejections are the worker's and the sink's bad rows (each
    record once, whichever stage rejected it); the SDK's own rejections are in its Stats."""
    lo, hi = literal(w.date_from), literal(w.date_to)
    rows = ", ".join(f"({literal(name)}, {literal(status)}, {i})" for i, (name, status) in enumerate(events))
    return f"""SELECT c.event AS event, c.status AS status, e.events AS events,
       if(e.events = 0, NULL, e.last_seen) AS last_seen, r.rejected AS rejected,
       r.by_reason AS rejected_by_reason, e.events = 0 AS never_fired
FROM (SELECT tupleElement(x, 1) AS event, tupleElement(x, 2) AS status, tupleElement(x, 3) AS position
      FROM (SELECT arrayJoin([{rows}]) AS x)) AS c
LEFT JOIN (SELECT event, count() AS events, max(occurred_at) AS last_seen FROM product_events
           WHERE toDate(occurred_at) BETWEEN {lo} AND {hi} GROUP BY event) AS e ON e.event = c.event
LEFT JOIN (SELECT event, sum(n) AS rejected, arraySort(groupArray((problem, n))) AS by_reason
           FROM (SELECT extract(detail, '^[a-z_]+: (?:event .)?([a-z][a-z0-9_]*[.][a-z0-9_.]*[a-z0-9_])') AS event,
                        extract(detail, '^([a-z_]+): ') AS problem,
                        uniqExact(source_topic, source_partition, source_offset) AS n
                 FROM bad_rows WHERE reason = 'invalid_event' AND toDate(failed_at) BETWEEN {lo} AND {hi}
                 GROUP BY event, problem)
           GROUP BY event) AS r ON r.event = c.event
ORDER BY c.position"""  # unmatched joins give 0, not NULL (join_use_nulls is 0 by default)
