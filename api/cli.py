"""Commands of the read side: `tally dashboard` and `tally api-key create|list|revoke`."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from typing import Any

import click


def _settings(stack: bool = True) -> Any:
    from tally.runtime import load_settings

    return load_settings(stack=stack)


@click.command()
def dashboard() -> None:
    """Run the Stats API (Plausible v2 compatible) in the foreground, on
    TALLY_DASHBOARD_HOST:TALLY_DASHBOARD_PORT (127.0.0.1:8001)."""
    from tally.api.server import run

    from tally.runtime import load_settings, setup_logging

    settings = load_settings()
    setup_logging(settings)
    run(settings)


def _with_store(settings: Any, op: Callable[[Any], Any], via_socket: Callable[[Any], Any]) -> Any:
    """Run a key operation where the keys are: the running sink's socket (embedded, stack up),
    chDB opened here (embedded, stack down), or the server with the operator's credentials."""
    from tally.sinks.query import QueryError, SinkSocket
    from tally.sinks.warehouse import connect

    if settings.embedded_clickhouse:
        try:
            return via_socket(SinkSocket(settings.socket_path, timeout=30))
        except (ConnectionError, FileNotFoundError):
            pass
        except QueryError as exc:
            raise click.ClickException(str(exc)) from None
    client = connect(settings)
    try:
        return op(client)
    finally:
        client.close()


def _revoke(revoke_local: Callable[[Any], Any], path: str) -> dict[str, Any] | None:
    """Revoke a record through the store (`path` on the sink's socket): its public fields,
    or None when there is no such record."""
    def local(client: Any) -> Any:
        record = revoke_local(client)
        return record.public() if record else None

    def remote(sock: Any) -> Any:
        status, body = sock.request("POST", path, {})
        return json.loads(body) if status == 200 else None

    return _with_store(_settings(), local, remote)


@click.group("api-key")
def api_key() -> None:
    """Keys of the Stats API: stored hashed in the warehouse, scoped to sites (and tenants)."""


@api_key.command("create")
@click.option("--site", "sites", multiple=True, help="A site (hostname) the key may read; repeat for more.")
@click.option("--tenant", "tenants", multiple=True,
              help="A tenant whose product adoption the key may read (`*` for all); repeat for more.")
@click.option("--name", default="", help="What the key is for (shown by `list`).")
def create(sites: tuple[str, ...], tenants: tuple[str, ...], name: str) -> None:
    """Create a key. It is printed once, as the last line; only its hash is stored."""
    from tally.api.keys import new_key
    from tally.sinks import keystore

    if not sites and not tenants:
        raise click.UsageError("give at least one --site (or --tenant)")
    key, record = new_key(name, tuple(sites), tuple(tenants))
    _with_store(_settings(), lambda c: keystore.insert(c, record),
                lambda sock: sock.json("POST", "/v1/keys", record.to_json()))
    scope = ", ".join([*(f"site {s}" for s in sites), *(f"tenant {t}" for t in tenants)])
    click.echo(f"created key {record.key_id} ({scope}); it is shown only now:", err=True)
    click.echo(key)


@api_key.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def listing(as_json: bool) -> None:
    """List keys: id, name, scopes, created and revoked times (never the keys or their hashes)."""
    from tally.sinks import keystore

    keys = _with_store(_settings(), lambda c: [r.public() for r in keystore.all_keys(c)],
                       lambda sock: sock.json("GET", "/v1/keys"))
    if as_json:
        click.echo(json.dumps(keys))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("key id", "name", "sites", "tenants", "created", "revoked")
    for k in keys:
        table.add_row(k["key_id"], k["name"], ", ".join(k["sites"]), ", ".join(k["tenants"]), k["created_at"][:19],
                      (k["revoked_at"] or "")[:19])
    Console().print(table)


@api_key.command("revoke")
@click.argument("key_id")
def revoke(key_id: str) -> None:
    """Revoke a key by its id (the `tly_<id>_` part). Requests with it fail within 10 s."""
    from tally.sinks import keystore

    record = _revoke(lambda c: keystore.revoke(c, key_id), f"/v1/keys/{key_id}/revoke")
    if record is None:
        click.echo(f"no key {key_id}", err=True)
        sys.exit(1)
    click.echo(f"revoked {key_id}")
