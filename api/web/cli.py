"""Commands of the web dashboard: `tally user create|list|delete` and `tally share create|list|revoke`.

Users and links are kept where the API keys are (api/cli.py `_with_store`): the
running sink's socket, chDB opened here when the stack is down, or the server.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import click
from tally.api.cli import _revoke, _settings, _with_store


def _table(headers: tuple[str, ...], rows: list[list[str]]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(*headers)
    for r in rows:
        table.add_row(*r)
    Console().print(table)


def _public(all_records: Callable[[Any], list[Any]], path: str) -> list[dict[str, Any]]:
    """Every record's public fields, from the store (`path` on the sink's socket)."""
    return _with_store(_settings(), lambda c: [r.public() for r in all_records(c)], lambda sock: sock.json("GET", path))


def _show(items: list[dict[str, Any]], as_json: bool, headers: tuple[str, ...],
          row: Callable[[dict[str, Any]], list[str]]) -> None:
    if as_json:
        click.echo(json.dumps(items))
        return
    _table(headers, [row(x) for x in items])


@click.group("user")
def user() -> None:
    """Dashboard accounts: admins (every site, adoption, operations) and viewers (granted sites)."""


def _find_user(settings: Any, email: str) -> Any:
    from tally.sinks import accountstore
    from tally.sinks.accountstore import UserRecord

    def remote(sock: Any) -> Any:
        status, body = sock.request("GET", f"/v1/users/{quote(email, safe='@')}")
        return UserRecord.from_json(json.loads(body)) if status == 200 else None

    return _with_store(settings, lambda c: accountstore.find_user(c, email), remote)


def _save_user(settings: Any, record: Any) -> None:
    from tally.sinks import accountstore

    _with_store(settings, lambda c: accountstore.put_user(c, record),
                lambda sock: sock.json("POST", "/v1/users", record.to_json()))


@user.command("create")
@click.argument("email")
@click.option("--role", type=click.Choice(["admin", "viewer"]), default="viewer", show_default=True)
@click.option("--site", "sites", multiple=True, help="A site the viewer may read; repeat for more.")
@click.option("--password-stdin", is_flag=True, help="Read the password from standard input (one line).")
def create_user(email: str, role: str, sites: tuple[str, ...], password_stdin: bool) -> None:
    """Create an account. The password is asked for (or read with --password-stdin); only its
    argon2 hash is stored."""
    from tally.api.accounts import AccountError, new_user

    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = click.prompt("Password", hide_input=True, confirmation_prompt=True, err=True)
    try:
        record = new_user(email, password, role, sites)
    except AccountError as exc:
        raise click.UsageError(str(exc)) from None
    settings = _settings()
    existing = _find_user(settings, record.email)
    if existing is not None and existing.deleted_at is None:
        raise click.ClickException(f"{record.email} already has an account (`tally user delete` it first)")
    _save_user(settings, record)
    scope = "every site" if role == "admin" else ", ".join(sites)
    click.echo(f"created {role} {record.email} ({scope})")


@user.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_users(as_json: bool) -> None:
    """List accounts (never their password hashes)."""
    from tally.sinks import accountstore

    users = [u for u in _public(accountstore.all_users, "/v1/users") if not u["deleted_at"]]
    _show(users, as_json, ("email", "role", "sites", "created"),
          lambda u: [u["email"], u["role"], "every site" if u["role"] == "admin" else ", ".join(u["sites"]),
                     u["created_at"][:19]])


@user.command("delete")
@click.argument("email")
def delete_user(email: str) -> None:
    """Delete an account; its sessions end within 10 s."""
    settings = _settings()
    existing = _find_user(settings, email.strip().lower())
    if existing is None or existing.deleted_at is not None:
        click.echo(f"no user {email}", err=True)
        sys.exit(1)
    _save_user(settings, replace(existing, deleted_at=datetime.now(UTC)))
    click.echo(f"deleted {existing.email}")


@user.command("login-info")
def login_info() -> None:
    """Print the dashboard's URL and how to sign in (`make up` ends with it)."""
    from tally.sinks import accountstore

    settings = _settings()
    click.echo(f"Dashboard: {dashboard_url(settings)}/")
    try:
        users = _with_store(settings, lambda c: [u.public() for u in accountstore.all_users(c)],
                            lambda sock: sock.json("GET", "/v1/users"))
    except Exception as exc:  # the URL is still worth printing
        click.echo(f"(accounts could not be listed: {exc})")
        return
    admins = [u["email"] for u in users if not u["deleted_at"] and u["role"] == "admin"]
    if admins:
        click.echo(f"Sign in as {', '.join(admins)} (admin), or add someone: tally user create EMAIL --site SITE")
    else:
        click.echo("No admin account yet; create one, then sign in with it: "
                   ".venv/bin/tally user create you@example.com --role admin")


@click.group("share")
def share() -> None:
    """Read-only shared links to one site's dashboard (no sign-in needed)."""


def dashboard_url(settings: Any) -> str:
    host = settings.dashboard_host
    if host in ("0.0.0.0", "::", ""):
        host = settings.dashboard_allowed_hosts[0]
    elif ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{settings.dashboard_port}"


@share.command("create")
@click.option("--site", required=True, help="The site whose dashboard the link opens.")
@click.option("--name", default="", help="What the link is for (shown by `list`).")
def create_share(site: str, name: str) -> None:
    """Create a shared link. Its URL is printed once, as the last line; only a hash is stored."""
    from tally.api.accounts import new_link
    from tally.sinks import accountstore

    token, record = new_link(site, name)
    settings = _settings()
    _with_store(settings, lambda c: accountstore.put_link(c, record),
                lambda sock: sock.json("POST", "/v1/shares", record.to_json()))
    click.echo(f"created shared link {record.link_id} for {site}; the URL is shown only now "
               f"(revoke with `tally share revoke {record.link_id}`):", err=True)
    click.echo(f"{dashboard_url(settings)}/share/{token}")


@share.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def list_shares(as_json: bool) -> None:
    """List shared links: id, site, name, created and revoked times (never the URLs)."""
    from tally.sinks import accountstore

    _show(_public(accountstore.all_links, "/v1/shares"), as_json, ("link id", "site", "name", "created", "revoked"),
          lambda x: [x["link_id"], x["site"], x["name"], x["created_at"][:19], (x["revoked_at"] or "")[:19]])


@share.command("revoke")
@click.argument("link_id")
def revoke_share(link_id: str) -> None:
    """Revoke a shared link by its id; it stops opening the dashboard within 10 s."""
    from tally.sinks import accountstore

    if _revoke(lambda c: accountstore.revoke_link(c, link_id), f"/v1/shares/{link_id}/revoke") is None:
        click.echo(f"no shared link {link_id}", err=True)
        sys.exit(1)
    click.echo(f"revoked {link_id}")
