"""Versioned DDL from infra/clickhouse/NNN_name.sql, applied once each and recorded.

Files are templates: `{raw_retention_days}` and friends come from settings.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path

from clickhouse_connect.driver.client import Client

from tally.config import Settings

DDL_DIR = Path(__file__).resolve().parent.parent / "infra" / "clickhouse"
_FILE = re.compile(r"^(\d{3})_([a-z0-9_]+)\.sql$")

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


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    template: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.template.encode()).hexdigest()[:16]

    def statements(self, settings: Settings) -> list[str]:
        sql = self.template.format(**template_values(settings))
        body = "\n".join(line for line in sql.splitlines() if not line.strip().startswith("--"))
        return [s.strip() for s in body.split(";") if s.strip()]


def template_values(settings: Settings) -> dict[str, int]:
    return {
        "raw_retention_days": settings.raw_retention_days,
        "product_retention_days": settings.product_retention_days,
        "bad_rows_retention_days": settings.bad_rows_retention_days,
    }


def migrations(ddl_dir: Path = DDL_DIR) -> list[Migration]:
    out = []
    for path in sorted(ddl_dir.glob("*.sql")):
        m = _FILE.match(path.name)
        if not m:
            raise ValueError(f"{path}: migrations are named NNN_name.sql")
        out.append(Migration(int(m[1]), m[2], path.read_text()))
    return out


def migrate(client: Client, settings: Settings) -> list[str]:
    """Apply pending migrations in order; return the names applied."""
    client.command(LEDGER)
    applied = {row[0] for row in client.query("SELECT version FROM tally_migrations").result_rows}
    done = []
    for mig in migrations():
        if mig.version in applied:
            continue
        for statement in mig.statements(settings):
            client.command(statement)
        client.insert("tally_migrations", [[mig.version, mig.name, mig.checksum]],
                      column_names=["version", "name", "checksum"])
        done.append(f"{mig.version:03d}_{mig.name}")
    return done
