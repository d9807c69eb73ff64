"""Avro encoding of Tally's records, from the schemas kept in this folder.

Schemas live in `schemas/avro/<name>.v<N>.avsc`; every version stays. Writers
use the newest version of a schema. Without a schema registry the wire format
is the Avro specification's single-object encoding:

    C3 01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little endian) | body

Readers find the writer schema by its fingerprint among *all* versions in the
repo and resolve it to the newest version, so old records still decode after
the schema evolves.
"""

from __future__ import annotations

import io
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form

SCHEMA_DIR = Path(__file__).parent / "avro"
MAGIC = b"\xc3\x01"
_FILE = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


class DecodeError(ValueError):
    """Bytes that are not a record of a known schema. The message says why."""


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    path: Path
    parsed: dict[str, Any]
    fingerprint: bytes

    @property
    def raw(self) -> dict[str, Any]:
        return json.loads(self.path.read_text())


def load_versions(schema_dir: Path = SCHEMA_DIR) -> dict[str, list[SchemaVersion]]:
    """All schema versions under schema_dir, by name, oldest first."""
    out: dict[str, list[SchemaVersion]] = {}
    for path in sorted(schema_dir.glob("*.avsc")):
        m = _FILE.match(path.name)
        if not m:
            raise ValueError(f"{path}: schema files are named <name>.v<N>.avsc")
        parsed = parse_schema(json.loads(path.read_text()), _write_hint=False)
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        out.setdefault(m["name"], []).append(
            SchemaVersion(m["name"], int(m["version"]), path, parsed, fp)
        )
    for versions in out.values():
        versions.sort(key=lambda v: v.version)
    return out


class Codec:
    """Encodes with the newest schema version; decodes any known version."""

    def __init__(self, schema_dir: Path = SCHEMA_DIR) -> None:
        self.versions = load_versions(schema_dir)
        self._by_fp = {v.fingerprint: v for vs in self.versions.values() for v in vs}

    def latest(self, name: str) -> SchemaVersion:
        try:
            return self.versions[name][-1]
        except KeyError:
            raise KeyError(f"no schema named {name!r}; known: {sorted(self.versions)}") from None

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        schema = self.latest(name)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.parsed, record)
        return buf.getvalue()

    def decode(self, name: str, data: bytes) -> dict[str, Any]:
        if len(data) < 10 or data[:2] != MAGIC:
            raise DecodeError("not Avro single-object encoding (missing C3 01 marker)")
        writer = self._by_fp.get(bytes(data[2:10]))
        if writer is None:
            raise DecodeError(f"unknown schema fingerprint {bytes(data[2:10]).hex()}")
        if writer.name != name:
            raise DecodeError(f"record is a {writer.name!r}, expected {name!r}")
        reader = self.latest(name)
        try:
            return fastavro.schemaless_reader(
                io.BytesIO(data[10:]), writer.parsed, None if reader is writer else reader.parsed
            )
        except Exception as exc:
            raise DecodeError(f"corrupt {name} body: {exc}") from None


@cache
def default_codec() -> Codec:
    return Codec()
