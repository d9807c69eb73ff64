"""The `api_keys` table: typed operations, never analyst SQL.

Only a SHA-256 hash of each key is stored. In embedded mode the sink runs these
for `tally api-key` and the dashboard (through its Unix socket); in server mode
they run against the server with the operator's (create, list, revoke) or the
dashboard user's (find) credentials.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from clickhouse_connect.driver.client import Client

from tally.clock import as_utc, now_micros

COLUMNS = ("key_id", "key_hash", "name", "sites", "tenants", "created_at", "revoked_at", "version")
SELECT = "SELECT key_id, key_hash, name, sites, tenants, created_at, revoked_at FROM api_keys FINAL"


@dataclass(frozen=True)
class KeyRecord:
    key_id: str
    key_hash: str
    name: str
    sites: tuple[str, ...]
    tenants: tuple[str, ...]
    created_at: datetime
    revoked_at: datetime | None = None

    def public(self) -> dict[str, Any]:
        """What `tally api-key list` shows: never the hash."""
        return {"key_id": self.key_id, "name": self.name, "sites": list(self.sites), "tenants": list(self.tenants),
                "created_at": self.created_at.isoformat(),
                "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None}

    def to_json(self) -> dict[str, Any]:
        return {**self.public(), "key_hash": self.key_hash}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> KeyRecord:
        revoked = d.get("revoked_at")
        return cls(str(d["key_id"]), str(d.get("key_hash", "")), str(d["name"]), tuple(map(str, d["sites"])),
                   tuple(map(str, d.get("tenants", ()))), datetime.fromisoformat(d["created_at"]), datetime.fromisoformat(revoked) if revoked else None)


def _row(r: tuple) -> KeyRecord:
    return KeyRecord(r[0], r[1], r[2], tuple(r[3]), tuple(r[4]), as_utc(r[5]), as_utc(r[6]))


def insert(client: Client, record: KeyRecord) -> None:
    client.insert("api_keys", [[record.key_id, record.key_hash, record.name, list(record.sites), list(record.tenants),
                                record.created_at, record.revoked_at, now_micros()]], column_names=list(COLUMNS))


def find(client: Client, key_id: str) -> KeyRecord | None:
    rows = client.query(SELECT + " WHERE key_id = {k:String}", parameters={"k": key_id}).result_rows
    return _row(rows[0]) if rows else None


def all_keys(client: Client) -> list[KeyRecord]:
    rows = client.query(SELECT + " ORDER BY created_at, key_id").result_rows
    return [_row(r) for r in rows]


def revoke(client: Client, key_id: str) -> KeyRecord | None:
    """Mark the key revoked (a newer version of its row); None when there is no such key."""
    record = find(client, key_id)
    if record is None:
        return None
    if record.revoked_at is None:
        record = replace(record, revoked_at=datetime.now(UTC))
        insert(client, record)
    return record
