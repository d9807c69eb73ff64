"""Schema rules, checked by `tally schemas check` (and by the test suite).

1. Every schema file is a record with a namespace, and every field (nested
   records included) has a `doc`.
2. Versions of a schema are numbered 1..N with no gap: every version stays.
3. Every pair of consecutive versions is FULL compatible, proven by real Avro
   resolution of sample records: data written with the old version reads with
   the new one (backward) and data written with the new one reads with the old
   one (forward). When resolution fails, the offending field is named.
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
from fastavro.schema import parse_schema
from fastavro.utils import generate_many
from tally.schemas.codec import SCHEMA_DIR, SchemaVersion, load_versions

SAMPLES = 30


@dataclass(frozen=True)
class Problem:
    schema: str
    where: str      # file, or "vA -> vB (direction)"
    field: str      # offending field path, "" when not about one field
    message: str

    def __str__(self) -> str:
        at = f" field {self.field!r}:" if self.field else ""
        return f"{self.schema} {self.where}:{at} {self.message}"


@dataclass(frozen=True)
class PairResult:
    schema: str
    old: int
    new: int
    samples: int


def _resolves(writer: Any, reader: Any, records: list[Any]) -> Exception | None:
    w = parse_schema(writer, _write_hint=False)
    r = parse_schema(reader, _write_hint=False)
    for rec in records:
        buf = io.BytesIO()
        try:
            fastavro.schemaless_writer(buf, w, rec)
            buf.seek(0)
            fastavro.schemaless_reader(buf, w, r)
        except Exception as exc:
            return exc
    return None


def _samples(schema: Any, n: int = SAMPLES) -> list[Any]:
    return list(generate_many(schema, n))


def _type_of(t: Any) -> Any:
    return t["type"] if isinstance(t, dict) and not t.get("logicalType") and t.get("type") in (
        "record", "array", "map") else t


def _culprits(writer: dict, reader: dict, path: str, direction: str) -> list[tuple[str, str]]:
    """Fields of two record schemas that make resolution fail, with why."""
    out: list[tuple[str, str]] = []
    wfields = {f["name"]: f for f in writer["fields"]}
    for rf in reader["fields"]:
        names = [rf["name"], *rf.get("aliases", [])]
        wf = next((wfields[n] for n in names if n in wfields), None)
        fpath = f"{path}{rf['name']}"
        if wf is None:
            if "default" not in rf:
                out.append((fpath, "added without a default (old records cannot be read)"
                            if direction == "backward" else
                            "removed, but it has no default (old readers cannot read new records)"))
            continue
        wt, rt = wf["type"], rf["type"]
        if wt == rt:
            continue
        # Recurse into records (directly or as array/map items) to name the inner field.
        inner = _inner_records(wt, rt)
        if inner is not None:
            sub = _culprits(inner[0], inner[1], f"{fpath}{inner[2]}.", direction)
            if sub:
                out += sub
                continue
        mini_w = {"type": "record", "name": "Probe", "fields": [{"name": "f", "type": wt}]}
        mini_r = {"type": "record", "name": "Probe", "fields": [{"name": "f", "type": rt}]}
        try:
            err = _resolves(mini_w, mini_r, _samples(mini_w, 10))
        except Exception as exc:  # a schema that does not even parse
            err = exc
        if err is not None:
            out.append((fpath, f"type changed from {json.dumps(wt)} to {json.dumps(rt)} ({err})"))
    return out


def _inner_records(wt: Any, rt: Any) -> tuple[dict, dict, str] | None:
    if isinstance(wt, dict) and isinstance(rt, dict) and wt.get("type") == rt.get("type"):
        if wt["type"] == "record":
            return wt, rt, ""
        for key, mark in (("items", "[]"), ("values", "{}")):
            w, r = wt.get(key), rt.get(key)
            if isinstance(w, dict) and isinstance(r, dict) and w.get("type") == r.get("type") == "record":
                return w, r, mark
    return None


def _lint(v: SchemaVersion) -> list[Problem]:
    raw = v.raw
    where = v.path.name
    out = []
    if raw.get("type") != "record":
        out.append(Problem(v.name, where, "", "top level must be a record"))
        return out
    if not raw.get("namespace"):
        out.append(Problem(v.name, where, "", "record has no namespace"))

    def walk(schema: Any, path: str) -> None:
        if isinstance(schema, list):
            for s in schema:
                walk(s, path)
        elif isinstance(schema, dict):
            if schema.get("type") == "record":
                for f in schema["fields"]:
                    if not str(f.get("doc", "")).strip():
                        out.append(Problem(v.name, where, f"{path}{f['name']}", "has no doc"))
                    walk(f["type"], f"{path}{f['name']}.")
            elif schema.get("type") == "array":
                walk(schema["items"], path[:-1] + "[].")
            elif schema.get("type") == "map":
                walk(schema["values"], path[:-1] + "{}.")

    walk(raw, "")
    return out


def check(schema_dir: Path = SCHEMA_DIR) -> tuple[list[PairResult], list[Problem]]:
    """Check every schema under schema_dir; returns the pairs proven and the problems."""
    try:
        versions = load_versions(schema_dir)
    except Exception as exc:
        return [], [Problem("*", str(schema_dir), "", f"cannot load schemas: {exc}")]
    proven: list[PairResult] = []
    problems: list[Problem] = []
    for name, vs in sorted(versions.items()):
        for v in vs:
            problems += _lint(v)
        numbers = [v.version for v in vs]
        if numbers != list(range(1, len(vs) + 1)):
            problems.append(Problem(name, "versions", "",
                                    f"versions are {numbers}; every version 1..N must stay in the repo"))
        for old, new in zip(vs, vs[1:], strict=False):
            ok = True
            for direction, writer, reader in (("backward", old, new), ("forward", new, old)):
                err = _resolves(writer.raw, reader.raw, _samples(writer.raw))
                if err is None:
                    continue
                ok = False
                where = f"v{old.version} -> v{new.version} ({direction})"
                culprits = _culprits(writer.raw, reader.raw, "", direction)
                if not culprits:
                    problems.append(Problem(name, where, "", f"resolution failed: {err}"))
                for fpath, why in culprits:
                    problems.append(Problem(name, where, fpath, why))
            if ok:
                proven.append(PairResult(name, old.version, new.version, SAMPLES))
    return proven, problems
