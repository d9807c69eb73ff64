"""Server mode: the read-only ClickHouse users, created by `tally migrate`.

- `TALLY_ANALYST_CLICKHOUSE_URL`'s user (`tally query`, `tally reconcile`):
  SELECT on the analyst tables and views only;
- `TALLY_DASHBOARD_CLICKHOUSE_URL`'s user (`tally dashboard`): the same, plus
  reading `api_keys` (to check the Stats API's keys).

Both get the settings profile `tally_analyst`: `readonly = 1` and the analyst limits,
each CONST, so no query can change them. Passwords come from the URLs and are sent
as salted SHA-256 hashes only. `tally migrate --print-access-sql` prints the statements.
"""

from __future__ import annotations

import hashlib
import secrets
from urllib.parse import unquote, urlsplit

from tally.sinks.analyst import ANALYST_TABLES, ANALYST_VIEWS, limits
from tally.sinks.sql import quote

from tally.config import Settings

PROFILE = "tally_analyst"


class AccessError(ValueError):
    pass


def _ident(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def _user(url: str, what: str) -> tuple[str, str, str]:
    parts = urlsplit(url)
    if not parts.username or not parts.password:
        raise AccessError(f"{what} must name a user and a password (http://user:password@host:8123/db)")
    database = parts.path.strip("/") or "default"
    return unquote(parts.username), unquote(parts.password), database


def access_sql(settings: Settings) -> list[str]:
    """The statements for the users whose URLs are set; [] when none is."""
    owner = urlsplit(settings.clickhouse_url).username or "default"
    profile = ", ".join(f"{name} = {value if isinstance(value, int) else quote(value)} CONST"
                        for name, value in limits(settings).items())
    out = [f"CREATE SETTINGS PROFILE OR REPLACE {PROFILE} SETTINGS readonly = 1 CONST, {profile}"]
    for url, what, extra in ((settings.analyst_clickhouse_url, "TALLY_ANALYST_CLICKHOUSE_URL", ()),
                             (settings.dashboard_clickhouse_url, "TALLY_DASHBOARD_CLICKHOUSE_URL", ("api_keys", "dashboard_users", "share_links"))):
        if not url:
            continue
        user, password, database = _user(url, what)
        if user == owner:
            raise AccessError(f"{what} uses the sink's user {user!r}; readers need a user of their own")
        salt = secrets.token_hex(16)  # the printed hash is salted: no lookup table reverses it
        digest = hashlib.sha256((password + salt).encode()).hexdigest()
        out.append(f"CREATE USER OR REPLACE {_ident(user)} IDENTIFIED WITH sha256_hash BY {quote(digest)} "
                   f"SALT {quote(salt)} DEFAULT DATABASE {_ident(database)} SETTINGS PROFILE {quote(PROFILE)}")
        for table in sorted(ANALYST_TABLES | ANALYST_VIEWS) + list(extra):
            out.append(f"GRANT SELECT ON {_ident(database)}.{_ident(table)} TO {_ident(user)}")
    return out if len(out) > 1 else []


def apply_access(client, settings: Settings) -> list[str]:
    """Create (or update) the read-only users; the names of those created."""
    statements = access_sql(settings)
    for statement in statements:
        client.command(statement)
    return [s.split()[4].strip("`") for s in statements if s.startswith("CREATE USER")]
