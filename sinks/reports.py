"""Named reports of `tally query`: read-only SQL over the analysts' views.

Each report is one SELECT; values are rendered as quoted literals (the SQL
still runs in a read-only session, so quoting is about correctness, not the
safety net).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date


def literal(value: str | date | int) -> str:
    if isinstance(value, int):
        return str(value)
    text = value.isoformat() if isinstance(value, date) else str(value)
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


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
    """Daily pageviews and visitors of one site, from the aggregates (every day of the
    window is listed; a day without traffic shows 0)."""
    days = (w.date_to - w.date_from).days + 1
    return (
        "SELECT d.day AS day, ifNull(s.pageviews, 0) AS pageviews, ifNull(s.visitors, 0) AS visitors\n"
        f"FROM (SELECT {literal(w.date_from)}::Date + number AS day FROM numbers({days})) AS d\n"
        "LEFT JOIN (SELECT day, pageviews, visitors FROM site_stats_daily\n"
        f"           WHERE site = {literal(site)} AND day BETWEEN {literal(w.date_from)} AND {literal(w.date_to)}) AS s\n"
        "ON s.day = d.day\nORDER BY day"
    )


def top_pages_sql(site: str, w: Window, limit: int) -> str:
    return f"SELECT * FROM top_pages(site = {literal(site)}, {w.args()}) LIMIT {int(limit)}"


def sources_sql(site: str, w: Window, limit: int) -> str:
    return f"SELECT * FROM top_sources(site = {literal(site)}, {w.args()}) LIMIT {int(limit)}"


TECH_VIEWS = {"browsers": "top_browsers", "os": "top_operating_systems", "devices": "top_devices"}


def technology_sql(kind: str, site: str, w: Window, limit: int) -> str:
    return f"SELECT * FROM {TECH_VIEWS[kind]}(site = {literal(site)}, {w.args()}) LIMIT {int(limit)}"


def adoption_sql(w: Window) -> str:
    return f"SELECT * FROM adoption_summary({w.args()})"
