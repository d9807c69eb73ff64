"""ClickHouse DDL under infra/clickhouse/, applied by `tally migrate` (and by the sink at start).

Two kinds of file:
- `NNN_name.sql`: versioned, applied once each in order and recorded in
  `tally_migrations`. Never edit one that has shipped; add the next number.
  ClickHouse DDL is not transactional, so each statement of a versioned file is
  recorded in `tally_migration_steps` once it has run: a migrate killed part-way
  resumes at the first statement not recorded. The one that was running when it
  died runs again, so every statement must be safe to repeat: `IF NOT EXISTS`,
  inserts whose rows replace themselves, and renames (a `RENAME` whose sources
  are gone and targets exist is taken as done; see `_renamed`).
- `R_name.sql`: repeatable, re-applied whenever its *rendered* text changes,
  recorded in `tally_repeatable_migrations`. Views and retention TTLs live
  here, so changing TALLY_RAW_RETENTION_DAYS yields `ALTER ... MODIFY TTL`
  on the next migrate, and a changed view is re-created.

Files are templates: `{raw_retention_days}` and the other names of
template_values() are replaced; any other braces (ClickHouse query
parameters such as `{site:String}`) are left alone.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client
from tally.sinks.sql import quote

from tally.config import Settings

DDL_DIR = Path(__file__).resolve().parent.parent / "infra" / "clickhouse"
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")
_REPEATABLE = re.compile(r"^R_([a-z0-9_]+)\.sql$")

LEDGER = """
CREATE TABLE IF NOT EXISTS tally_migrations
(
    version    UInt32,
    name       String,
    checksum   String,
    applied_at DateTime DEFAULT now()
)
ENGINE = MergeTree ORDER BY version
"""

STEPS_LEDGER = """
CREATE TABLE IF NOT EXISTS tally_migration_steps
(
    version    UInt32,
    step       UInt32,
    applied_at DateTime DEFAULT now()
)
ENGINE = MergeTree ORDER BY (version, step)
"""

_RENAME = re.compile(r"^RENAME\s+TABLE\s+(.+)$", re.I | re.S)

REPEATABLE_LEDGER = """
CREATE TABLE IF NOT EXISTS tally_repeatable_migrations
(
    name       String,
    checksum   String,
    applied_at DateTime64(6) DEFAULT now64(6)
)
ENGINE = MergeTree ORDER BY (name, applied_at)
"""


def template_values(settings: Settings) -> dict[str, str]:
    from tally.schemas.catalog import FAMILIES, FAMILY_LABELS

    families = ", ".join(f"({quote(f)}, {quote(FAMILY_LABELS.get(f, f))}, {i})"
                         for i, f in enumerate(FAMILIES, 1))
    return {
        "raw_retention_days": str(settings.raw_retention_days),
        "product_retention_days": str(settings.product_retention_days),
        "bad_rows_retention_days": str(settings.bad_rows_retention_days),
        "families": f"[{families}]",
        "family_names": "(" + ", ".join(quote(f) for f in FAMILIES) + ")",
    }


def render(template: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        template = template.replace("{" + key + "}", value)
    return template


def split_statements(sql: str) -> list[str]:
    body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
    return [s.strip() for s in body.split(";") if s.strip()]


@dataclass(frozen=True)
class Migration:
    version: int  # 0 for repeatables
    name: str
    template: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]

    def rendered(self, settings: Settings) -> str:
        return render(self.template, template_values(settings))

    def rendered_checksum(self, settings: Settings) -> str:
        return hashlib.sha256(self.rendered(settings).encode()).hexdigest()[:16]

    def statements(self, settings: Settings) -> list[str]:
        return split_statements(self.rendered(settings))


def migrations(ddl_dir: Path = DDL_DIR) -> list[Migration]:
    out = []
    for path in sorted(ddl_dir.glob("[0-9]*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise ValueError(f"{path}: versioned migrations are named NNN_name.sql")
        out.append(Migration(int(m[1]), m[2], path.read_text()))
    versions = [m.version for m in out]
    if len(set(versions)) != len(versions):
        raise ValueError(f"{ddl_dir}: two migrations share a version number")
    return out


def repeatables(ddl_dir: Path = DDL_DIR) -> list[Migration]:
    out = []
    for path in sorted(ddl_dir.glob("R_*.sql")):
        m = _REPEATABLE.match(path.name)
        if not m:
            raise ValueError(f"{path}: repeatable migrations are named R_name.sql")
        out.append(Migration(0, m[1], path.read_text()))
    return out


def migrate(client: Client, settings: Settings, ddl_dir: Path = DDL_DIR) -> list[str]:
    """Apply pending versioned migrations in order, then every repeatable whose
    rendered text changed; return the names applied."""
    client.command(LEDGER)
    client.command(STEPS_LEDGER)
    client.command(REPEATABLE_LEDGER)
    applied = {row[0] for row in client.query("SELECT version FROM tally_migrations").result_rows}
    done = []
    for mig in migrations(ddl_dir):
        if mig.version in applied:
            continue
        steps = {row[0] for row in client.query(
            "SELECT step FROM tally_migration_steps WHERE version = {v:UInt32}", parameters={"v": mig.version}
        ).result_rows}
        for step, statement in enumerate(mig.statements(settings), 1):
            if step in steps:
                continue
            if not _renamed(client, statement):
                client.command(statement)
            client.insert("tally_migration_steps", [[mig.version, step]], column_names=["version", "step"])
        client.insert("tally_migrations", [[mig.version, mig.name, mig.checksum]],
                      column_names=["version", "name", "checksum"])
        done.append(f"{mig.version:03d}_{mig.name}")
    last = dict(client.query("SELECT name, argMax(checksum, applied_at) FROM tally_repeatable_migrations "
                             "GROUP BY name").result_rows)
    for mig in repeatables(ddl_dir):
        checksum = mig.rendered_checksum(settings)
        if last.get(mig.name) == checksum:
            continue
        for statement in mig.statements(settings):
            client.command(statement)
        client.insert("tally_repeatable_migrations", [[mig.name, checksum]], column_names=["name", "checksum"])
        done.append(f"R_{mig.name} ({checksum})")
    return done


def _renamed(client: Client, statement: str) -> bool:
    """True for a RENAME TABLE that has already run: the names it renames from and not to
    are gone, and the names it renames to and not from exist. (A RENAME run twice would
    fail, or, once the old table is dropped, rename a fresh empty table into place.)"""
    m = _RENAME.match(statement.strip())
    if not m:
        return False
    pairs = [tuple(p.strip().strip("`") for p in re.split(r"\s+TO\s+", part.strip(), flags=re.I))
             for part in m[1].split(",")]
    sources, targets = {a for a, _ in pairs}, {b for _, b in pairs}
    rows = client.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows
    tables = {r[0] for r in rows}
    return not (sources - targets) & tables and (targets - sources) <= tables
