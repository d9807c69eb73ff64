"""Seeds 001 and 004 in the catalog: every event accepts its documented metadata and rejects
each bad value naming the key; money and enum lists; the envelope; the lifecycle; the
seed-by-seed map in docs/events.md."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest
from tally.producers.sdk.record import Rejection, product_record
from tally.schemas import catalog
from tally.schemas.catalog import CATALOG, ENVELOPE, SEED_MAP, check, events_markdown
from tally.schemas.reasons import EventProblem

SEED_EVENTS = sorted(n for n, e in CATALOG.items() if e.source in ("seed 001", "seed 004"))


def good_value(prop):
    return {"id": "x_1", "enum": prop.values[0] if prop.values else "", "bool": True,
            "timestamp": 1_763_780_000_000, "int": prop.max, "type": "value_error", "route": "/a/{b}",
            "money": 129_900, "enum_list": ",".join(prop.values[:3])}[prop.kind]


# (bad value, problem) per kind: each must be rejected naming the key.
BAD = {
    "id": [("Jane Doe", EventProblem.UNSAFE_VALUE), ("jane@example.com", EventProblem.UNSAFE_VALUE)],
    "enum": [("nope", EventProblem.BAD_VALUE), ("free text here", EventProblem.UNSAFE_VALUE)],
    "bool": [("yes", EventProblem.BAD_TYPE), (1, EventProblem.BAD_TYPE)],
    "timestamp": [(5, EventProblem.BAD_VALUE), ("now", EventProblem.BAD_TYPE)],
    "int": [(-1, EventProblem.BAD_VALUE), ("3", EventProblem.BAD_TYPE), (True, EventProblem.BAD_TYPE)],
    "type": [("Value Error", EventProblem.UNSAFE_VALUE)],
    "route": [("https://x.io/t/1?a=b", EventProblem.UNSAFE_VALUE)],
    "money": [(-100, EventProblem.BAD_VALUE), (12.5, EventProblem.BAD_TYPE), ("12.50", EventProblem.BAD_TYPE)],
    "enum_list": [("zzz", EventProblem.BAD_VALUE), ("a b,c", EventProblem.UNSAFE_VALUE),
                  (["x"], EventProblem.UNSAFE_VALUE)],
}


def rec(event: str, metadata: dict) -> dict:
    spec = CATALOG[event]
    return {"event": event, "feature_area": spec.feature_area, "tenant_id": "t1", "workspace_id": "w1",
            "actor_type": "user", "actor_id": "u_1", "subject_type": spec.subject_type,
            "subject_id": "s_1" if spec.subject_type else None,
            "occurred_at": datetime(2026, 11, 30, tzinfo=UTC), "app": "app", "metadata": metadata}


def full_metadata(event: str) -> dict:
    return {k: good_value(p) for k, p in CATALOG[event].props.items()}


@pytest.mark.parametrize("event", SEED_EVENTS)
def test_every_seed_event_accepts_its_documented_metadata(event):
    assert check(rec(event, full_metadata(event))) is None
    required = {k: good_value(p) for k, p in CATALOG[event].props.items() if p.required}
    assert check(rec(event, required)) is None


@pytest.mark.parametrize("event,key", [(e, k) for e in SEED_EVENTS for k in CATALOG[e].own_props])
def test_every_bad_value_is_rejected_naming_the_key(event, key):
    prop = CATALOG[event].props[key]
    for value, problem in BAD[prop.kind]:
        meta = full_metadata(event)
        meta[key] = value
        verdict = check(rec(event, meta))
        assert verdict is not None and verdict[0] == problem and f"'{key}'" in verdict[1], (value, verdict)
    if prop.required:
        meta = full_metadata(event)
        del meta[key]
        assert check(rec(event, meta)) == (EventProblem.MISSING_FIELD,
                                           f"{event}: metadata key {key!r} is required")


def test_no_seed_event_declares_free_text_or_personal_keys():
    banned = {"user_id", "username", "email", "name", "project_name", "description", "error_message",
              "message", "title", "note", "notes", "endpoint", "url", "query"}
    for e in CATALOG.values():
        assert not banned & set(e.props), e.name


def test_money_needs_its_currency_and_sums_as_an_integer():
    assert check(rec("invoice.paid", {"amount": 129_900, "currency": "EUR"})) is None
    assert check(rec("invoice.paid", {"amount": 129_900})) == (
        EventProblem.MISSING_FIELD, "invoice.paid: metadata key 'currency' is required")
    assert check(rec("invoice.paid", {"amount": 1, "currency": "eur"}))[0] == EventProblem.BAD_VALUE
    with pytest.raises(ValueError, match="currency"):
        catalog.Event("bill.made", "bill", "d", "f", {"total": catalog._money("x")})


def test_lists_are_canonical_strings_and_the_sdk_canonicalises_lists():
    assert check(rec("project.updated", {"fields_changed": "name,status"})) is None
    assert check(rec("project.updated", {"fields_changed": ""})) is None  # the empty list
    unsorted = check(rec("project.updated", {"fields_changed": "status,name"}))
    assert unsorted[0] == EventProblem.BAD_VALUE and "sorted" in unsorted[1]
    assert check(rec("project.updated", {"fields_changed": "name,name"}))[0] == EventProblem.BAD_VALUE
    made = product_record("project.updated", "t1", "w1", "u1", ("project", "p1"),
                          {"fields_changed": ("status", "name", "status")}, None, "app")
    assert made["metadata"] == {"fields_changed": "name,status"}
    with pytest.raises(Rejection, match="'fields_changed'"):
        product_record("project.updated", "t1", "w1", "u1", None, {"fields_changed": ["name", "Acme Corp"]},
                       None, "app")


def test_envelope_keys_are_allowed_on_every_event_and_checked():
    for name in CATALOG:
        for key in ENVELOPE:
            assert key in CATALOG[name].props
    meta = {"report_type": "x", "request_id": "req_01J9", "success": True, "duration_ms": 840}
    assert check(rec("report.created", meta)) is None
    bad = check(rec("report.created", {**meta, "request_id": "GET /tickets?id=jane@example.com"}))
    assert bad[0] == EventProblem.UNSAFE_VALUE and "'request_id'" in bad[1]
    assert check(rec("report.created", {**meta, "duration_ms": -3}))[0] == EventProblem.BAD_VALUE
    with pytest.raises(ValueError, match="envelope"):
        catalog.Event("x.y", "x", "d", "f", {"success": catalog._bool("mine")})


def test_lifecycle_draft_rejected_deprecated_needs_a_replacement(monkeypatch):
    draft = dataclasses.replace(CATALOG["project.archived"], status="draft")
    monkeypatch.setitem(CATALOG, "project.archived", draft)
    assert check(rec("project.archived", {})) == (
        EventProblem.DRAFT_EVENT, "event 'project.archived' is a draft: make it active in the catalog to emit it")
    with pytest.raises(ValueError, match="replaced_by"):
        dataclasses.replace(CATALOG["project.deleted"], status="deprecated")
    with pytest.raises(ValueError, match="status"):
        dataclasses.replace(CATALOG["project.deleted"], status="retired")
    deprecated = dataclasses.replace(CATALOG["project.deleted"], status="deprecated", replaced_by="project.archived")
    monkeypatch.setitem(CATALOG, "project.deleted", deprecated)
    assert check(rec("project.deleted", {})) is None  # still accepted; the SDK warns and counts


def test_docs_list_every_seed_001_and_004_event():
    md = events_markdown()
    seed_001 = ["ticket_created", "ticket_updated", "ticket_resolved", "ticket_assigned", "ticket_deleted",
                "ticket_searched", "ticket_comment_added", "user_logged_in", "user_logged_out", "user_signed_up",
                "login_failed", "auth_validated", "api_request", "slow_query", "api_error", "slow_operation",
                "operation_error"]
    seed_004 = ["auth.login", "auth.logout", "auth.login_failed", "project.created", "project.updated",
                "project.deleted", "project.archived", "timer.started", "timer.stopped", "timer.idle_detected",
                "task.created", "task.updated", "task.status_changed", "report.generated", "export.csv",
                "export.pdf", "invoice.created", "invoice.sent", "invoice.paid", "client.created",
                "client.updated", "admin.user_created", "admin.user_role_changed", "admin.settings_updated",
                "system.backup_created", "system.error"]
    mapped = {(seed, name) for seed, name, _, _ in SEED_MAP}
    for name in seed_001:
        assert ("001", name) in mapped and f"| 001 | `{name}` |" in md
    for name in seed_004:
        assert ("004", name) in mapped and f"| 004 | `{name}` |" in md
    for _, _, event, why in SEED_MAP:
        assert event or why  # an exclusion says why
    for key in ("**Owner:**", "**Last updated:**", "**Review cycle:**"):
        assert key in md


def test_lint_is_clean_today_and_names_what_breaks_the_rules(monkeypatch):
    from datetime import date, timedelta

    today = date.fromisoformat(catalog.LAST_UPDATED)
    assert catalog.lint(today) == []
    overdue = catalog.lint(today + timedelta(days=catalog.REVIEW_CYCLE_DAYS + 1))
    assert [(f.level, f.event) for f in overdue] == [("warning", "")] and "review was due" in overdue[0].message
    bad = dataclasses.replace(CATALOG["client.created"], status="review",
                              props={**CATALOG["client.created"].own_props, "email": catalog._id("x")})
    monkeypatch.setitem(CATALOG, "client.created", bad)
    found = {(f.level, f.event, f.message.split(":")[0].split(" ")[0]) for f in catalog.lint(today)}
    assert found == {("error", "client.created", "key"), ("warning", "client.created", "in")}
