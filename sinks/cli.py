"""Analyst commands: `tally query` (named reports and raw read-only SQL) and `tally reconcile`.

Both reach the warehouse through `sinks.query.run_sql`: the running sink's Unix
socket in embedded mode, chDB directly when the stack is down, or the server's
read-only analyst user; every query passes the SQL guard and runs read-only with
the analyst limits.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import click

FORMATS = {"table": "JSONCompact", "json": "JSON", "csv": "CSVWithNames"}
MAX_CELL = 80  # characters of one cell in a terminal table; json and csv stay complete


def _settings() -> Any:
    from tally.runtime import load_settings

    return load_settings(stack=True)


def _run(sql: str, fmt: str) -> None:
    from tally.sinks.query import QueryError, run_sql

    from tally.runtime import console

    try:
        out = run_sql(_settings(), sql, FORMATS[fmt])
    except QueryError as exc:
        console.print(f"[red]query failed[/red]: {exc}", markup=True, highlight=False)
        sys.exit(1)
    if fmt == "table":
        print_table(json.loads(out))
    else:
        sys.stdout.write(out.decode())


def cell(value: Any, width: int = MAX_CELL) -> str:
    """One value as terminal text, cut to `width` characters (a 2,000-character path
    would otherwise fill the screen)."""
    text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)
    text = text.replace("\n", " ")
    return text if len(text) <= width else text[:width - 1] + "…"


def print_table(result: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from tally.runtime import console

    table = Table()
    for column in result.get("meta", []):
        table.add_column(Text(column["name"]))
    for row in result.get("data", []):
        table.add_row(*(Text(cell(v)) for v in row))  # Text: a "[b]" in a path is not markup
    Console(highlight=False).print(table)
    rows = result.get("rows", len(result.get("data", [])))
    console.print(f"{rows} row{'s' if rows != 1 else ''}", highlight=False)


class _SQLByDefault(click.Group):
    """`tally query "<SQL>"` runs raw SQL; `tally query <report> ...` runs a named report."""

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        first = next((a for a in args if not a.startswith("-")), None)
        if first is not None and first not in self.commands:
            args = ["sql", *args]
        return super().parse_args(ctx, args)


def _today() -> date:
    return datetime.now(UTC).date()


def window_options(f: Callable[..., Any]) -> Callable[..., Any]:
    f = click.option("--to", "date_to", type=click.DateTime(["%Y-%m-%d"]), default=None,
                     help="Last day, inclusive (UTC). Default: today.")(f)
    f = click.option("--from", "date_from", type=click.DateTime(["%Y-%m-%d"]), default=None,
                     help="First day (UTC). Default: 29 days before --to.")(f)
    return f


def format_option(f: Callable[..., Any]) -> Callable[..., Any]:
    return click.option("--format", "fmt", type=click.Choice(sorted(FORMATS)), default="table",
                        show_default=True)(f)


def _window(date_from: datetime | None, date_to: datetime | None) -> Any:
    from tally.sinks.reports import Window

    to = date_to.date() if date_to else _today()
    frm = date_from.date() if date_from else to - timedelta(days=29)
    try:
        return Window(frm, to)
    except ValueError as exc:
        raise click.BadParameter(str(exc)) from None


@click.group(cls=_SQLByDefault, invoke_without_command=False)
def query() -> None:
    """Query the warehouse (read-only): `tally query "<SQL>"` or a named report.

    \b
    Reports: stats, top-pages, sources, browsers, os, devices, adoption.
    Views and tables are described in docs/analysts.md.
    """


@query.command("sql")
@click.argument("sql")
@format_option
def query_sql(sql: str, fmt: str) -> None:
    """Run read-only SQL and print the result."""
    _run(sql, fmt)


@query.command("stats")
@click.option("--site", required=True, help="Site (hostname) to report on.")
@window_options
@format_option
def query_stats(site: str, date_from: datetime | None, date_to: datetime | None, fmt: str) -> None:
    """Daily pageviews and visitors of a site (from the aggregates)."""
    from tally.sinks.reports import stats_sql

    _run(stats_sql(site, _window(date_from, date_to)), fmt)


def _ranked(name: str, help_text: str, build: Callable[[str, Any, int], str]) -> None:
    @query.command(name, help=help_text)
    @click.option("--site", required=True, help="Site (hostname) to report on.")
    @window_options
    @click.option("--limit", default=10, show_default=True, type=click.IntRange(1, 100000))
    @format_option
    def command(site: str, date_from: datetime | None, date_to: datetime | None, limit: int, fmt: str) -> None:
        _run(build(site, _window(date_from, date_to), limit), fmt)


def _register_ranked() -> None:
    from tally.sinks import reports

    _ranked("top-pages", "Most viewed paths of a site in the window (path_day aggregates).", reports.top_pages_sql)
    _ranked("sources", "Traffic sources (referrer class, host, UTM) of a site in the window.", reports.sources_sql)
    for kind, what in (("browsers", "Browsers"), ("os", "Operating systems"), ("devices", "Device classes")):
        _ranked(kind, f"{what} of a site's visitors in the window.",
                lambda site, w, limit, kind=kind: reports.technology_sql(kind, site, w, limit))


_register_ranked()


@query.command("adoption")
@click.option("--tenant", default=None, help="Only this tenant's workspaces (default: all tenants).")
@window_options
@format_option
def query_adoption(tenant: str | None, date_from: datetime | None, date_to: datetime | None, fmt: str) -> None:
    """Product adoption: the five event families, active workspaces (0 shown explicitly)
    and the time of the last event."""
    from tally.sinks.reports import adoption_sql

    _run(adoption_sql(_window(date_from, date_to), tenant), fmt)


@click.command()
@window_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def reconcile(date_from: datetime | None, date_to: datetime | None, as_json: bool) -> None:
    """Recompute pageviews and visitors per site and day from the raw rows, and visits,
    bounces and visit duration from a sessionisation of them, and compare them with the
    aggregates; and the daily breakdown rollups in use with the raw rows. Exits 1 when
    any site/day drifts."""
    from rich.console import Console
    from rich.table import Table
    from tally.sinks.query import QueryError
    from tally.sinks.reconcile import reconcile as check
    from tally.sinks.reconcile import reconcile_rollups, save_latest

    from tally.runtime import console

    w = _window(date_from, date_to)
    try:
        days = check(_settings(), w.date_from, w.date_to)
        rollups = reconcile_rollups(_settings(), w.date_from, w.date_to)
    except QueryError as exc:
        console.print(f"[red]reconcile failed[/red]: {exc}")
        sys.exit(2)
    drift = [d for d in days if d.drift]
    rollup_drift = [r for r in rollups if r.drift]
    summary = {"from": str(w.date_from), "to": str(w.date_to), "days": len(days),
               "drift": [d.__dict__ for d in drift], "rollup_days": len(rollups),
               "rollup_drift": [r.__dict__ for r in rollup_drift]}
    save_latest(_settings(), summary)  # the operations page shows the latest run
    if as_json:
        click.echo(json.dumps(summary))
    else:
        table = Table("site", "day", "raw pageviews", "agg pageviews", "raw visitors", "agg visitors",
                      "raw visits/bounces/ms", "agg visits/bounces/ms", "drift",
                      title=f"reconcile {w.date_from} .. {w.date_to}")
        for d in days:
            table.add_row(d.site, d.day, str(d.raw_pageviews), str(d.agg_pageviews), str(d.raw_visitors),
                          str(d.agg_visitors), "/".join(map(str, d.raw_sessions)), "/".join(map(str, d.agg_sessions)),
                          "[red]DRIFT[/red]" if d.drift else "ok")
        Console().print(table)
        console.print(f"{len(days)} site-days checked, {len(drift)} with drift")
        if rollups:
            table = Table("site", "day", "values", "differing", "drift", title="daily breakdown rollups")
            for r in rollups:
                table.add_row(r.site, r.day, str(r.values), str(r.differing), "[red]DRIFT[/red]" if r.drift else "ok")
            Console().print(table)
        console.print(f"{len(rollups)} site-days of breakdown rollups checked, {len(rollup_drift)} with drift")
    sys.exit(1 if drift or rollup_drift else 0)


@click.command("report")
@window_options
@format_option
def catalog_report(date_from: datetime | None, date_to: datetime | None, fmt: str) -> None:
    """Per catalog event: volume and last sighting in the window, rejections by reason,
    and the events that never fired (default window: the last 30 days)."""
    from tally.schemas.catalog import CATALOG
    from tally.sinks.reports import catalog_report_sql

    _run(catalog_report_sql(_window(date_from, date_to), [(n, e.status) for n, e in CATALOG.items()]), fmt)
