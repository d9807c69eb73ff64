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
