"""Drop and bad-row reasons are closed, typed sets (schemas/reasons.py): the writers take
members only, and every reason the code can emit is a member."""

from __future__ import annotations

import ast
import json
from datetime import date
from pathlib import Path

import pytest
from tally.schemas.codec import SCHEMA_DIR
from tally.schemas.reasons import BadRowReason, Component, DropReason, EventProblem
from tally.schemas.records import bad_row, drop_count

from tests.test_structure import modules

ENUMS = {e.__name__: e for e in (DropReason, BadRowReason, EventProblem, Component)}
REASON_VALUES = {m.value for e in (DropReason, BadRowReason, EventProblem) for m in e}
REASONS_MODULE = "tally.schemas.reasons"
LAYOUTS_MODULE = "tally.schemas.layouts"  # field names, such as "datacenter", not reasons
# Literals equal to a reason that are something else (module, value): why.
NOT_REASONS = {("tally.streams.bots", "headless"): "Verdict.rule, the name of the rule that matched"}


def test_builders_take_members_only():
    row = bad_row(BadRowReason.TOO_LATE, "x" * 5000, Component.WORKER, "t", 1, 2, b"\x00")
    assert row["reason"] == "too_late" and row["reason"].__class__ is str  # the Avro field is a string
    assert len(row["detail"]) == 1000 and row["component"] == "worker"
    drop = drop_count("a.com", date(2026, 1, 2), DropReason.BOT, 3, Component.WORKER, 1, 2)
    assert drop["reason"].__class__ is str and drop["reason"] == "bot"
    with pytest.raises(TypeError, match="BadRowReason"):
        bad_row("too_late", "", Component.WORKER, "t", 1, 2, b"")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DropReason"):
        drop_count("a.com", 0, "bot", 1, Component.WORKER)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="DropReason"):
        drop_count("a.com", 0, BadRowReason.NO_SALT, 1, Component.WORKER)  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="Component"):
        drop_count("a.com", 0, DropReason.BOT, 1, "worker")  # type: ignore[arg-type]


def test_the_counters_take_members_only(tmp_path):
    from tally.producers.collector.drops import EdgeDrops
    from tally.producers.sdk import Client

    from tally.config import Settings

    settings = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path), "TALLY_DISABLED": "1"})
    edge = EdgeDrops(settings, producer=lambda: None)  # type: ignore[arg-type,return-value]
    edge.add("a.com", 0, DropReason.GPC)
    with pytest.raises(TypeError):
        edge.add("a.com", 0, "gpc")  # type: ignore[arg-type]
    client = Client(settings)
    client.count_drop(DropReason.MIDDLEWARE_ERROR, "test")
    with pytest.raises(TypeError):
        client.count_drop("middleware_error", "test")  # type: ignore[arg-type]
    assert client.stats().dropped == {"middleware_error": 1}


def _trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text()) for name, path in modules().items()}


def test_every_reason_the_code_names_is_a_member():
    named = 0
    for module, tree in _trees().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in ENUMS:
                assert node.attr in ENUMS[node.value.id].__members__, f"{module}: {node.value.id}.{node.attr}"
                named += 1
    assert named > 40


def _field_names(tree: ast.Module) -> set[int]:
    """Literals used as field names: dict keys, subscripts, the key of a .get()."""
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Dict):
            out |= {id(k) for k in n.keys if k is not None}
        elif isinstance(n, ast.Subscript):
            out.add(id(n.slice))
        elif isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr == "get" and n.args:
            out.add(id(n.args[0]))
    return out


def test_no_reason_is_written_as_a_bare_string():
    # Reasons come from the enums, never from string literals: so a new reason cannot be
    # emitted without being added to schemas/reasons.py.
    found = []
    for module, tree in _trees().items():
        if module in (REASONS_MODULE, LAYOUTS_MODULE):
            continue
        fields = _field_names(tree)
        for node in ast.walk(tree):
            if (isinstance(node, ast.Constant) and node.value in REASON_VALUES and id(node) not in fields
                    and (module, node.value) not in NOT_REASONS):
                found.append(f"{module}:{node.lineno} {node.value!r}")
    assert found == []


def test_what_the_emitters_return_is_a_member():
    from tally.schemas.catalog import check
    from tally.streams.bots import classify_ua

    data = Path(__file__).parent / "data"
    uas = (data / "ua_bots.txt").read_text().splitlines()[:400] + ["", "curl/8.0", "HeadlessChrome/120"]
    verdicts = {classify_ua(ua).reason for ua in uas} - {None}  # None: taken for a browser
    assert all(v.__class__ is DropReason for v in verdicts)
    assert {DropReason.EMPTY_USER_AGENT, DropReason.HEADLESS, DropReason.BOT} <= verdicts
    problems = [check({"event": "nope"}), check({"event": "report.created", "tenant_id": "t", "workspace_id": "w",
                                                 "actor_type": "user", "actor_id": "u1", "occurred_at": 1,
                                                 "metadata": {"x": 1}})]
    assert [p[0] for p in problems] == [EventProblem.UNKNOWN_EVENT, EventProblem.UNKNOWN_KEY]


def test_the_schema_docs_list_every_reason():
    for schema, enum in (("drop_count", DropReason), ("bad_row", BadRowReason)):
        raw = json.loads((SCHEMA_DIR / f"{schema}.v1.avsc").read_text())
        doc = next(f["doc"] for f in raw["fields"] if f["name"] == "reason")
        listed = {w.strip(" .,") for w in doc.split(":")[-1].split(",")}
        assert listed == {m.value for m in enum}, schema
