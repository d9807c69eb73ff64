"""The `tally` command: one entry point for every component and operation.

Each stage keeps its own commands in its own `cli.py`; they are registered at the bottom
of this file, the one place a new area adds its commands."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click
from rich.console import Console

from tally.runtime import console, load_settings, setup_logging

if TYPE_CHECKING:
    from tally.topics import TopicChanges


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
def main() -> None:
    """Tally: privacy-first web and product analytics on Kafka.

    Configuration comes from TALLY_* environment variables (docs/configuration.md).
    Start the local stack with `tally up`, look at it with `tally status`,
    query it with `tally query`, stop it with `tally down`.
    """


# --- components --------------------------------------------------------------

@main.command()
def worker() -> None:
    """Run a stream worker (Faust) in the foreground. Start more to scale out."""
    settings = load_settings()
    from tally.streams.app import run

    run(settings)


@main.command()
def sink() -> None:
    """Run the ClickHouse sink (Kafka -> ClickHouse) in the foreground."""
    settings = load_settings()
    setup_logging(settings)
    from tally.sinks.sink import run

    run(settings)


# --- setup and lifecycle ---------------------------------------------------------

@main.command()
def setup() -> None:
    """Fetch what the local stack needs (the Kafka broker's jars). Idempotent."""
    from tally.infra import kafka

    settings = load_settings()
    if settings.local_broker and settings.broker == "kafka":
        console.print(f"Kafka jars in {kafka.ensure_jars()}")


@main.command()
@click.option("--print-access-sql", is_flag=True,
              help="Print the SQL that creates the server-mode read-only users, and do nothing else.")
def migrate(print_access_sql: bool) -> None:
    """Apply pending ClickHouse migrations (infra/clickhouse/) and print what was applied.
    On a server, also create the read-only analyst and dashboard users (sinks/access.py)."""
    settings = load_settings()
    from tally.ops.migrate import WarehouseBusy, migrate_command

    if print_access_sql:
        from tally.sinks.access import access_sql

        click.echo(";\n".join(access_sql(settings)) or "-- set TALLY_ANALYST_CLICKHOUSE_URL / TALLY_DASHBOARD_CLICKHOUSE_URL")
        return

    try:
        applied = migrate_command(settings)
    except WarehouseBusy as exc:
        console.print(f"[red]cannot migrate now[/red]: {exc}")
        sys.exit(1)
    click.echo("\n".join(applied) if applied else "nothing to apply")


@main.group()
def topics() -> None:
    """Kafka topics of the pipeline."""


@topics.command("create")
def topics_create() -> None:
    """Create missing topics with their partitions, retention and cleanup policy."""
    from tally.topics import ensure_topics

    changes = ensure_topics(load_settings())
    click.echo("\n".join(changes.created) if changes.created else "all topics exist")
    for line in changes.altered:
        click.echo(f"changed {line}")
    for line in changes.warnings:
        console.print(f"[yellow]warning[/yellow]: {line}")


@main.command()
@click.option("--timeout", default=180.0, show_default=True, help="Seconds to wait for each component.")
def up(timeout: float) -> None:
    """Start the local stack in the background: broker, sink, worker, collector, dashboard.

    Returns when every component is ready. Running it again while the stack
    runs starts only what is missing. One `up` or `down` runs at a time per state
    dir: a second one waits for the first, then finds what it started.
    """
    from tally.ops import stack

    with stack.stack_lock(load_settings(), lambda: console.print("waiting for another `tally up` or `down`...")):
        _up(timeout)


def _up(timeout: float) -> None:
    from tally.ops import stack

    from tally import health
    from tally.topics import ensure_topics

    settings = load_settings()
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ)
    saved = settings.run_dir / "env.json"
    if any(stack.running_pid(settings, c.name) for c in stack.components(load_settings(stack=True))):
        # Completing a running stack: with the settings it was started with (the broker
        # count, ports...), unless given again.
        settings = load_settings(stack=True)
        env = {**json.loads(saved.read_text()), **os.environ} if saved.exists() else env
    else:
        stack.write_private(saved, json.dumps(settings.public_env()))
    comps = stack.components(settings)
    # The broker nodes start together (a quorum needs its peers), the rest one by one.
    for group in [[c for c in comps if c.broker]] + [[c] for c in comps if not c.broker]:
        started = []
        for comp in group:
            pid = stack.running_pid(settings, comp.name)
            if pid is not None:
                console.print(f"[yellow]already running[/yellow] {comp.name} (pid {pid}): {comp.describe(settings)}")
                continue
            try:
                health.forget_dead(settings, comp.name)
                started.append((comp, stack.spawn(settings, comp, env), time.monotonic()))
            except Exception as exc:
                console.print(f"[red]failed[/red] {comp.name}: {exc}")
                sys.exit(1)
        for comp, pid, t0 in started:
            with console.status(f"starting {comp.name}..."):
                try:
                    stack.wait_ready(settings, comp, timeout)
                except Exception as exc:
                    console.print(f"[red]failed[/red] {comp.name}: {exc}")
                    sys.exit(1)
            console.print(f"[green]started[/green] {comp.name} (pid {pid}, {time.monotonic() - t0:.1f}s): "
                          f"{comp.describe(settings)}")
        if not group or group[0].broker:  # the brokers (or an external cluster's) are up
            report_topics(ensure_topics(settings))
    console.print(f"logs in {settings.log_dir}; stop with `tally down`")


def report_topics(changes: TopicChanges) -> None:
    if changes.created:
        console.print(f"created topics: {', '.join(changes.created)}")
    for line in changes.altered:
        console.print(f"changed topic {line}")
    for line in changes.warnings:
        console.print(f"[yellow]warning[/yellow]: {line}")


@main.command()
def down() -> None:
    """Stop every process `tally up` started (dashboard, collector, worker, sink, broker nodes)."""
    from tally.ops import stack

    with stack.stack_lock(load_settings(), lambda: console.print("waiting for another `tally up` or `down`...")):
        _down()


def _down() -> None:
    from tally.ops import stack

    settings = load_settings(stack=True)
    comps = stack.components(settings)
    for comp in reversed([c for c in comps if not c.broker]):
        if stack.stop(settings, comp.name):
            console.print(f"stopped {comp.name}")
    for name in stack.stop_together(settings, [c.name for c in comps if c.broker]):
        console.print(f"stopped {name}")


@main.command()
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object instead of tables.")
def status(as_json: bool) -> None:
    """Show each component's health, and every consumer group's lag and members.

    Lag is given per topic in total and for the worst partition; a growing lag
    on the stream group means it is time to start another `tally worker`.

    With nothing of the stack running (and no stalled worker's report to show) it
    says so in one line and exits with status 3 (as `systemctl status` does for a
    stopped unit).
    """
    from dataclasses import asdict

    from tally.ops import stack
    from tally.ops.lag import stack_groups

    from tally import health

    settings = load_settings(stack=True)
    rows = []
    for comp in stack.components(settings):
        pid = stack.running_pid(settings, comp.name)
        row = {"component": comp.name, "pid": pid, "ready": comp.ready(settings),
               "where": comp.describe(settings)}
        reports = health.read(settings, comp.name)
        mine = [r for r in reports if r.get("pid") == pid] or reports[:1]
        if mine:  # what the process says of itself (the worker's watchdog): never look healthy when stuck
            row["health"] = {k: v for k, v in mine[0].items() if k != "pid"}
            row["ready"] = row["ready"] and mine[0].get("state") == "ok"
        rows.append(row)

    def has_news(r: dict[str, Any]) -> bool:
        said = r.get("health") or {}
        return bool(r["pid"] or r["ready"] or said.get("alive") or said.get("state") == "stalled")

    # Down: nothing runs, and no report of a dead process says why (a stalled worker's does).
    if not any(has_news(r) for r in rows):
        if as_json:
            click.echo(json.dumps({"components": rows, "groups": [], "running": False}))
        else:
            click.echo(f"Tally is not running: no component is up (state dir {settings.state_dir}); "
                       "`tally up` starts it.")
        raise SystemExit(3)
    brokers_up = any(r["ready"] for r, c in zip(rows, stack.components(settings), strict=True) if c.broker)
    groups = stack_groups(settings) if rows and (brokers_up or not settings.local_broker) else []
    if as_json:
        click.echo(json.dumps({"components": rows, "groups": [asdict(g) for g in groups], "running": True}))
        return
    from rich.table import Table

    out = Console()
    table = Table("component", "pid", "health", "where", title="components")
    for r in rows:
        said = r.get("health") or {}
        if said.get("state") == "stalled":
            state = f"[red]stalled[/red]: {said.get('detail', '')}"
        elif said.get("state") == "no_broker":
            state = f"[yellow]no broker[/yellow]: {said.get('detail', '')}"
        elif r["ready"]:
            state = "[green]ready[/green]"
        else:
            state = "[yellow]starting[/yellow]" if r["pid"] else "[red]down[/red]"
        if said.get("alive") and said.get("waiting_for"):
            state += f" (waiting for: {'; '.join(said['waiting_for'])})"
        where = r["where"] + (f"; metrics {said['metrics']}" if said.get("alive") and said.get("metrics") else "")
        table.add_row(r["component"], str(r["pid"] or "-"), state, where)
    out.print(table)
    for g in groups:
        t = Table("topic", "lag", "worst partition", title=f"consumer group {g.group} ({g.state})")
        for lag in g.lag:
            t.add_row(lag.topic, str(lag.total), f"{lag.worst_partition} (lag {lag.worst_lag})")
        out.print(t)
        m = Table("member", "host", "partitions", title=f"members of {g.group}")
        for member in g.members:
            parts = "; ".join(f"{topic}: {','.join(map(str, ps))}" for topic, ps in member["partitions"].items())
            m.add_row(f"{member['client_id']} …{member['member_id'][-8:]}", member["host"], parts or "-")
        out.print(m)


# --- analyst access ------------------------------------------------------------

@main.command()
@click.option("--beacons", default=30, show_default=True, help="How many demo beacons to send.")
def demo(beacons: int) -> None:
    """Send a little demo traffic through the running collector."""
    from tally.ops.demo import send_demo_traffic

    settings = load_settings(stack=True)
    sent = send_demo_traffic(settings, beacons)
    console.print(f"sent {sent} beacons to http://{settings.collector_host}:{settings.collector_port}")


@main.group()
def config() -> None:
    """Configuration (TALLY_* variables)."""


@config.command("docs")
@click.option("--output", type=click.Path(path_type=Path), default=Path("docs/configuration.md"), show_default=True)
def config_docs(output: Path) -> None:
    """Regenerate docs/configuration.md from the code."""
    from tally.config import configuration_markdown

    output.write_text(configuration_markdown())
    click.echo(f"wrote {output}")


@config.command("check")
def config_check() -> None:
    """Validate the TALLY_* environment and print the effective settings."""
    settings = load_settings()
    click.echo(json.dumps(settings.public_values(), indent=2))


# --- commands contributed by each stage --------------------------------------------
# Each area keeps its commands in its own module; they are registered here.
from tally.api.cli import api_key, dashboard  # noqa: E402
from tally.api.goals_cli import goals  # noqa: E402
from tally.api.web.cli import share, user  # noqa: E402
from tally.producers.collector.cli import collector  # noqa: E402
from tally.schemas.cli import catalog, schemas  # noqa: E402
from tally.sinks.cli import catalog_report, query, reconcile  # noqa: E402
from tally.streams.cli import classify_ua_command  # noqa: E402

catalog.add_command(catalog_report)  # the catalog's health, read from the warehouse

for command in (collector, schemas, catalog, query, reconcile, classify_ua_command, dashboard, api_key, user,
                share, goals):
    main.add_command(command)


if __name__ == "__main__":  # `python -m tally.ops.cli` works like `python -m tally.ops`
    main()
