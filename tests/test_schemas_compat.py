"""`tally schemas check`: passes on the repo, fails naming the field on incompatible edits
(made in temporary copies); readers resolve old versions after evolution; docs/events.md is fresh."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from tally.schemas.catalog import events_markdown
from tally.schemas.codec import SCHEMA_DIR, Codec, default_codec

from tests.conftest import REPO, tally_bin


def run_check(schema_dir: Path | None = None) -> subprocess.CompletedProcess:
    args = [tally_bin(), "schemas", "check"] + (["--dir", str(schema_dir)] if schema_dir else [])
    return subprocess.run(args, capture_output=True, text=True, cwd=REPO, timeout=120)


def copy_with_v2(tmp_path: Path, name: str, edit) -> Path:
    folder = tmp_path / "avro"
    shutil.copytree(SCHEMA_DIR, folder)
    schema = json.loads((folder / f"{name}.v1.avsc").read_text())
    edit(schema)
    (folder / f"{name}.v2.avsc").write_text(json.dumps(schema, indent=2))
    return folder


def fields(schema: dict) -> list[dict]:
    return schema["fields"]


def test_repo_schemas_pass():
    out = run_check()
    assert out.returncode == 0, out.stderr
    assert "ok product_event" in out.stdout


def test_compatible_v2_passes_and_old_records_still_decode(tmp_path):
    def add_field(s):
        fields(s).append({"name": "sdk_version", "doc": "SDK version.", "type": "string", "default": ""})

    folder = copy_with_v2(tmp_path, "product_event", add_field)
    out = run_check(folder)
    assert out.returncode == 0, out.stderr
    assert "product_event: 2 version(s); v1->v2 FULL" in out.stdout
    # v1 bytes (written by the repo codec) decode with the evolved schemas, resolved to v2.
    v1_bytes = default_codec().encode("product_event", {
        "event_id": "0190f3c2-5b7e-7a11-8c3d-112233445566", "event": "report.created",
        "feature_area": "report", "tenant_id": "t", "workspace_id": "w", "occurred_at": 0,
        "metadata": {"report_type": "x"}})
    evolved = Codec(folder)
    rec = evolved.decode("product_event", v1_bytes)
    assert rec["sdk_version"] == "" and rec["tenant_id"] == "t"
    # Records written with v2 carry the new field.
    v2_bytes = evolved.encode("product_event", {**rec, "sdk_version": "1.2"})
    assert evolved.decode("product_event", v2_bytes)["sdk_version"] == "1.2"


@pytest.mark.parametrize("name,edit,field,words", [
    ("product_event",
     lambda s: fields(s).append({"name": "region", "doc": "Region.", "type": "string"}),
     "region", "added without a default"),
    ("product_event",
     lambda s: s.__setitem__("fields", [f for f in fields(s) if f["name"] != "tenant_id"]),
     "tenant_id", "removed"),
    ("window_aggregate",
     lambda s: next(f for f in fields(s) if f["name"] == "count").__setitem__("type", "string"),
     "count", "type changed"),
    ("beacon_batch",
     lambda s: next(f for f in fields(s)[0]["type"]["items"]["fields"] if f["name"] == "site")
     .__setitem__("type", "long"),
     "items[].site", "type changed"),
])
def test_incompatible_edit_fails_naming_the_field(tmp_path, name, edit, field, words):
    out = run_check(copy_with_v2(tmp_path, name, edit))
    assert out.returncode == 1
    assert f"field '{field}'" in out.stderr and words in out.stderr, out.stderr
    assert f"{name} v1 -> v2" in out.stderr


def test_missing_doc_and_lost_version_fail(tmp_path):
    folder = copy_with_v2(tmp_path, "drop_count", lambda s: fields(s)[0].pop("doc"))
    shutil.move(folder / "drop_count.v2.avsc", folder / "drop_count.v3.avsc")
    out = run_check(folder)
    assert out.returncode == 1
    assert "field 'site': has no doc" in out.stderr
    assert "every version 1..N must stay" in out.stderr


def test_events_md_is_fresh():
    assert (REPO / "docs" / "events.md").read_text() == events_markdown(), \
        "docs/events.md is stale: run `tally catalog docs`"
