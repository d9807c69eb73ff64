"""Avro encoding of Tally's records, from the schemas kept in this folder.

Schemas live in `schemas/avro/<name>.v<N>.avsc`; every version stays. Writers
use the newest version of a schema. Without a schema registry the wire format
is the Avro specification's single-object encoding:

    C3 01 | CRC-64-AVRO fingerprint of the writer schema (8 bytes, little endian) | body

Readers find the writer schema by its fingerprint among *all* versions in the
repo and resolve it to the newest version, so old records still decode after
the schema evolves.

When TALLY_SCHEMA_REGISTRY_URL is set, writers use the Confluent wire format
through confluent-kafka's Schema Registry serializers (the convention Kafka
Connect and ClickHouse's `AvroConfluent` read):

    00 | schema id (4 bytes, big endian) | body

Subjects are the records' full names (RecordNameStrategy), so one topic may
carry several record types. Readers accept both encodings whatever the
setting, and resolve to the newest repo version either way.
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

import fastavro
from fastavro.schema import fingerprint, parse_schema, to_parsing_canonical_form
from tally.schemas.avro_writer import Fallback, Writer, compile_writer

if TYPE_CHECKING:
    from tally.config import Settings

SCHEMA_DIR = Path(__file__).parent / "avro"
MAGIC = b"\xc3\x01"
CONFLUENT_MAGIC = 0
_FILE = re.compile(r"^(?P<name>[a-z_]+)\.v(?P<version>\d+)\.avsc$")


class DecodeError(ValueError):
    """Bytes that are not a record of a known schema. The message says why."""


def long_at(data: bytes | memoryview, pos: int) -> tuple[int, int]:
    """An Avro long (zigzag varint) at pos, and the position after it: for the readers that
    walk record bytes without decoding them (the stream's beacon reader, the sink's framing)."""
    try:
        b = data[pos]
        pos += 1
        n = b & 0x7F
        shift = 7
        while b & 0x80:
            b = data[pos]
            pos += 1
            n |= (b & 0x7F) << shift
            shift += 7
            if shift > 70:
                raise DecodeError("varint longer than 10 bytes")
    except IndexError:
        raise DecodeError("truncated varint") from None
    return (n >> 1) ^ -(n & 1), pos


@dataclass(frozen=True)
class SchemaVersion:
    name: str
    version: int
    path: Path
    parsed: dict[str, Any]
    fingerprint: bytes
    # parse_schema(_write_hint=True): fastavro re-parses a schema on every read
    # and write unless it carries the hint, which costs more than the work itself.
    writer: dict[str, Any]

    @property
    def full_name(self) -> str:
        return f"{self.parsed['namespace']}.{self.parsed['name'].rpartition('.')[2]}"

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
        raw = json.loads(path.read_text())
        parsed = parse_schema(raw, _write_hint=False)
        fp = bytes.fromhex(fingerprint(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))
        out.setdefault(m["name"], []).append(
            SchemaVersion(m["name"], int(m["version"]), path, parsed, fp, parse_schema(raw))
        )
    for versions in out.values():
        versions.sort(key=lambda v: v.version)
    return out


class Codec:
    """Encodes with the newest schema version; decodes any known version.

    registry_url: a Confluent-compatible schema registry; when given, encode()
    writes the Confluent wire format. decode() reads both formats in any case
    (Confluent records need the registry to look their writer schema up).
    """

    def __init__(self, schema_dir: Path = SCHEMA_DIR, registry_url: str = "") -> None:
        self.versions = load_versions(schema_dir)
        self._by_fp = {v.fingerprint: v for vs in self.versions.values() for v in vs}
        self._latest = {name: vs[-1] for name, vs in self.versions.items()}
        # name -> (prefix, compiled writer) of the newest version, when it compiles
        self._fast: dict[str, tuple[bytes, Writer]] = {}
        for name, v in self._latest.items():
            with contextlib.suppress(Fallback):
                self._fast[name] = (MAGIC + v.fingerprint, compile_writer(v.parsed))
        self.registry_url = registry_url
        self._registry: Any = None
        self._serializers: dict[str, Any] = {}
        self._deserializers: dict[str, Any] = {}

    def latest(self, name: str) -> SchemaVersion:
        try:
            return self._latest[name]
        except KeyError:
            raise KeyError(f"no schema named {name!r}; known: {sorted(self.versions)}") from None

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        if self.registry_url:
            return self._encode_confluent(name, record)
        fast = self._fast.get(name)
        if fast is not None:
            out = [fast[0]]
            try:
                fast[1](record, out)
                return b"".join(out)
            except Exception:  # Fallback or an odd value: fastavro decides (and raises)
                pass
        schema = self.latest(name)
        buf = io.BytesIO()
        buf.write(MAGIC)
        buf.write(schema.fingerprint)
        fastavro.schemaless_writer(buf, schema.writer, record)
        return buf.getvalue()

    def writer_name(self, data: bytes) -> str | None:
        """The schema name of a record in single-object encoding (by its fingerprint); None
        for any other bytes (the Confluent format names its schema in the registry only)."""
        if len(data) < 10 or data[:2] != MAGIC:
            return None
        writer = self._by_fp.get(bytes(data[2:10]))
        return writer.name if writer is not None else None

    def decode(self, name: str, data: bytes) -> dict[str, Any]:
        if data[:1] == b"\x00" and len(data) >= 5:
            return self._decode_confluent(name, data)
        if len(data) < 10 or data[:2] != MAGIC:
            raise DecodeError("neither Avro single-object encoding (C3 01) nor Confluent wire format (00)")
        writer = self._by_fp.get(bytes(data[2:10]))
        if writer is None:
            raise DecodeError(f"unknown schema fingerprint {bytes(data[2:10]).hex()}")
        if writer.name != name:
            raise DecodeError(f"record is a {writer.name!r}, expected {name!r}")
        reader = self.latest(name)
        try:
            return fastavro.schemaless_reader(
                io.BytesIO(data[10:]), writer.writer, None if reader is writer else reader.writer
            )
        except Exception as exc:
            raise DecodeError(f"corrupt {name} body: {exc}") from None

    # --- Confluent wire format ------------------------------------------------------

    def registry(self) -> Any:
        """The Schema Registry client (created on first use)."""
        if self._registry is None:
            if not self.registry_url:
                raise DecodeError("record is in Confluent wire format but no schema registry is "
                                  "configured (TALLY_SCHEMA_REGISTRY_URL)")
            from confluent_kafka.schema_registry import SchemaRegistryClient

            self._registry = SchemaRegistryClient({"url": self.registry_url})
        return self._registry

    def _encode_confluent(self, name: str, record: dict[str, Any]) -> bytes:
        ser = self._serializers.get(name)
        if ser is None:
            from confluent_kafka.schema_registry import record_subject_name_strategy
            from confluent_kafka.schema_registry.avro import AvroSerializer

            ser = AvroSerializer(self.registry(), self.latest(name).path.read_text(),
                                 conf={"subject.name.strategy": record_subject_name_strategy})
            self._serializers[name] = ser
        from confluent_kafka.serialization import MessageField, SerializationContext

        return ser(record, SerializationContext(name, MessageField.VALUE))

    def _decode_confluent(self, name: str, data: bytes) -> dict[str, Any]:
        des = self._deserializers.get(name)
        if des is None:
            from confluent_kafka.schema_registry.avro import AvroDeserializer

            des = AvroDeserializer(self.registry(), self.latest(name).path.read_text())
            self._deserializers[name] = des
        from confluent_kafka.serialization import MessageField, SerializationContext

        try:
            out = des(bytes(data), SerializationContext(name, MessageField.VALUE))
        except DecodeError:
            raise
        except Exception as exc:
            raise DecodeError(f"undecodable Confluent-framed {name}: {exc}") from None
        if not isinstance(out, dict):
            raise DecodeError(f"Confluent-framed record is not a {name!r} record")
        return out


@cache
def _codec(registry_url: str) -> Codec:
    return Codec(registry_url=registry_url)


def default_codec(settings: Settings | None = None) -> Codec:
    """The process-wide codec for these settings (the Confluent format when they name a
    schema registry). Without settings: no registry, Avro single-object encoding. The codec
    never reads the environment: settings are read once, at start, and passed down."""
    return _codec(settings.schema_registry_url if settings is not None else "")
