"""`tally goals add|list|remove`: a site's goals, kept where the API keys are (api/cli.py
`_with_store`): the running sink's socket, chDB opened here when the stack is down, or the
server with the operator's credentials."""

from __future__ import annotations

import json
import sys
from typing import Any
from urllib.parse import quote, urlencode

import click
from tally.api.cli import _settings, _with_store


@click.group("goals")
def goals() -> None:
    """Goals per site: a custom event or a page pattern; the Stats API's `event:goal`."""


@goals.command("add")
@click.option("--site", required=True, help="The site (as the tracker sends it) the goal belongs to.")
@click.option("--event", default=None, help="A custom event's name: each such event is a conversion.")
@click.option("--page", default=None,
              help="A page pattern: a pageview of a matching path is a conversion. `*` matches within one "
                   "path segment (/blog/* is every post), `**` across segments (/blog/** is all under /blog).")
@click.option("--name", default=None, help="The goal's name in the API and dashboard (default: the event "
                                           "name, or `Visit <pattern>`).")
def add(site: str, event: str | None, page: str | None, name: str | None) -> None:
    """Add a goal; prints its id (what `remove` takes)."""
    from tally.sinks import goalstore

    if (event is None) == (page is None):
        raise click.UsageError("give exactly one of --event NAME or --page PATTERN")
    record = goalstore.new_goal(site, event, page, name)
    if (why := goalstore.problem(record)) is not None:
        raise click.UsageError(why)
    why = _with_store(_settings(), lambda c: goalstore.add(c, record),
                      lambda sock: sock.json("POST", "/v1/goals", record.to_json()) and None)
    if why is not None:
        raise click.UsageError(why)
    click.echo(f"added goal {record.goal_id} {record.name!r} to {site} ({record.kind} {record.value})", err=True)
    click.echo(record.goal_id)


@goals.command("list")
@click.option("--site", default=None, help="Only this site's goals.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def listing(site: str | None, as_json: bool) -> None:
    """List goals: id, site, name, what converts, when added."""
    from tally.sinks import goalstore

    route = "/v1/goals" + (f"?{urlencode({'site': site})}" if site is not None else "")
    rows: list[dict[str, Any]] = _with_store(_settings(), lambda c: [g.to_json() for g in goalstore.live(c, site)],
                                             lambda sock: sock.json("GET", route))
    if as_json:
        click.echo(json.dumps(rows))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("goal id", "site", "name", "kind", "event or page", "added")
    for g in rows:
        table.add_row(g["goal_id"], g["site"], g["name"], g["kind"], g["value"], g["created_at"][:19])
    Console().print(table)


@goals.command("remove")
@click.argument("goal_id")
def remove(goal_id: str) -> None:
    """Remove a goal by its id. Its conversions stay in the raw rows; the API stops showing it."""
    from tally.sinks import goalstore

    def local(client: Any) -> Any:
        return goalstore.remove(client, goal_id)

    def remote(sock: Any) -> Any:
        status, _ = sock.request("POST", f"/v1/goals/{quote(goal_id, safe='')}/remove", {})
        return status == 200 or None

    if _with_store(_settings(), local, remote) is None:
        click.echo(f"no goal {goal_id}", err=True)
        sys.exit(1)
    click.echo(f"removed {goal_id}")
