"""Analyst commands: `tally query` (named reports and raw read-only SQL) and `tally reconcile`.

Both reach the warehouse through `sinks.query.run_sql`: the running sink's
read-only endpoint in embedded mode, chDB directly when the stack is down, or
the configured server; every query runs in a `readonly=1` session.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from typing import Any

import click

FORMATS = {"table": "PrettyCompactNoEscapes", "json": "JSON", "csv": "CSVWithNames"}


def _settings() -> Any:
    from tally.runtime import load_settings

    return load_settings(stack=True)


def _run(sql: str, fmt: str) -> None:
    from tally.sinks.query import QueryError, run_sql

    from tally.runtime import console

    try:
        out = run_sql(_settings(), sql, FORMATS[fmt])
    except QueryError as exc:
        console.print(f"[red]query failed[/red]: {exc}")
        sys.exit(1)
    sys.stdout.write(out.decode())


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
@window_options
@format_option
def query_adoption(date_from: datetime | None, date_to: datetime | None, fmt: str) -> None:
    """Product adoption: the five event families and active workspaces (0 shown explicitly)."""
    from tally.sinks.reports import adoption_sql

    _run(adoption_sql(_window(date_from, date_to)), fmt)


@click.command()
@window_options
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of a table.")
def reconcile(date_from: datetime | None, date_to: datetime | None, as_json: bool) -> None:
    """Recompute pageviews and visitors per site and day from the raw rows, and visits,
    bounces and visit duration from a sessionisation of them, and compare them with the
    aggregates. Exits 1 when any site/day drifts."""
    from rich.console import Console
    from rich.table import Table
    from tally.sinks.query import QueryError
    from tally.sinks.reconcile import reconcile as check

    from tally.runtime import console

    w = _window(date_from, date_to)
    try:
        days = check(_settings(), w.date_from, w.date_to)
    except QueryError as exc:
        console.print(f"[red]reconcile failed[/red]: {exc}")
        sys.exit(2)
    drift = [d for d in days if d.drift]
    if as_json:
        click.echo(json.dumps({"from": str(w.date_from), "to": str(w.date_to), "days": len(days),
                               "drift": [d.__dict__ for d in drift]}))
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
    sys.exit(1 if drift else 0)
