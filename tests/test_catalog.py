"""The event catalog's validator: safe metadata passes, unsafe values are named."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tally.schemas.catalog import CATALOG, FAMILIES, check
from tally.schemas.reasons import EventProblem


def record(event: str = "report.created", **over):
    rec = {
        "event": event,
        "feature_area": CATALOG[event].feature_area if event in CATALOG else "x",
        "tenant_id": "tenant-1",
        "workspace_id": "ws_42",
        "actor_type": "user",
        "actor_id": "u_123",
        "subject_type": CATALOG[event].subject_type if event in CATALOG else "",
        "subject_id": "01J9Z3",
        "occurred_at": datetime(2026, 11, 22, tzinfo=UTC),
        "app": "billing",
        "metadata": {"report_type": "entra_admin_roles", "format": "pdf", "finding_count": 12},
    }
    rec.update(over)
    return rec


def test_valid_record_passes():
    assert check(record()) is None


def test_families_are_seed_003_feature_areas_in_order():
    assert FAMILIES == ("onboarding", "support", "operation", "report", "review_pack")
    assert CATALOG["review_pack.requested"].feature_area == "review_pack"
    assert CATALOG["onboarding.checkpoint_completed"].feature_area == "onboarding"


@pytest.mark.parametrize("value,why", [
    ("jane.doe@example.com", "email"),
    ("x" * 500, "free text"),
    ("https://example.com/r?token=abc", "query string"),
    ("eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abc", "token"),
])
def test_unsafe_string_values_are_named(value, why):
    bad = check(record(metadata={"report_type": value}))
    assert bad is not None
    reason, detail = bad
    assert reason == "unsafe_value"
    assert "report.created" in detail and "'report_type'" in detail and why in detail


def test_unknown_key_named():
    assert check(record(metadata={"report_type": "x", "note": "hello"})) == (
        "unknown_key",
        "report.created: metadata key 'note' is not declared (allowed: report_type, format, finding_count, request_id, success, duration_ms)",
    )


def test_unknown_event():
    reason, detail = check(record("report.exploded"))
    assert reason == "unknown_event" and "report.exploded" in detail


def test_nested_blob_is_unsafe():
    reason, detail = check(record(metadata={"report_type": "x", "format": {"a": 1}}))
    assert reason == "unsafe_value" and "'format'" in detail


@pytest.mark.parametrize("over,reason", [
    ({"tenant_id": ""}, "missing_field"),
    ({"workspace_id": None}, "missing_field"),
    ({"tenant_id": "ops@example.com"}, "unsafe_value"),
    ({"actor_id": "Jane Doe"}, "unsafe_value"),
    ({"actor_type": "robot"}, "bad_value"),
    ({"feature_area": "support"}, "wrong_feature_area"),
    ({"subject_type": "ticket"}, "bad_value"),
    ({"occurred_at": None}, "missing_field"),
    ({"metadata": {"format": "pdf"}}, "missing_field"),  # report_type is required
    ({"metadata": {"report_type": "x", "format": "docx"}}, "bad_value"),
    ({"metadata": {"report_type": "x", "finding_count": "12"}}, "bad_type"),
    ({"metadata": {"report_type": "x", "finding_count": True}}, "bad_type"),
    ({"metadata": {"report_type": "x", "finding_count": 10**9}}, "bad_value"),
    ({"metadata": "report_type=x"}, "bad_type"),
])
def test_reasons(over, reason):
    bad = check(record(**over))
    assert bad is not None and bad[0] == reason, bad
    assert bad[0].__class__ is EventProblem


def test_decoded_shapes_pass():
    # What the codec gives back: occurred_at datetime, metadata None/bool/int/str.
    rec = record("timer.started", metadata={"project_id": "p1", "task_id": None, "has_description": True})
    assert check(rec) is None
    rec = record("api.request_slow", subject_type="", subject_id=None, actor_type="service", actor_id="",
                 metadata={"route": "/tickets/{ticket_id}", "method": "GET", "status_class": "2xx",
                           "duration_bucket": "1s-2s"})
    assert check(rec) is None


def test_route_must_be_a_template_not_a_url():
    rec = record("api.request_slow", subject_type="", metadata={
        "route": "/search?q=secret", "method": "GET", "status_class": "2xx",
        "duration_bucket": "1s-2s"})
    reason, detail = check(rec)
    assert reason == "unsafe_value" and "'route'" in detail


def test_check_never_raises_on_garbage():
    for junk in ({}, {"event": 3}, {"event": "report.created", "metadata": {1: 2}}):
        assert check(junk) is not None


def test_unhashable_values_are_a_verdict_not_a_crash():
    assert check(record(tenant_id={"a": 1}))[0] == "bad_type"
    assert check(record(metadata={"report_type": ["x"]}))[0] == "unsafe_value"
    assert check("not a record")[0] == "bad_type"


def test_memo_does_not_leak_between_events():
    # a value safe for one event/key must not become safe for another key
    assert check(record(metadata={"report_type": "pdf"})) is None
    assert check(record(metadata={"report_type": "x", "format": "pdf"})) is None
    assert check(record(metadata={"report_type": "x", "format": "entra_admin_roles"}))[0] == "bad_value"


def test_sdk_event_ids_are_uuid7():
    import uuid

    from tally.ids import uuid7

    ids = {uuid7() for _ in range(2000)}
    assert len(ids) == 2000
    for s in list(ids)[:50] + [uuid7(1763780000000)]:
        u = uuid.UUID(s)
        assert u.version == 7 and u.variant == uuid.RFC_4122 and str(u) == s
    assert uuid7(1763780000000).startswith("019aa97a-f900-7")


def test_memo_keeps_bool_and_int_apart():
    ok = record("report.created", metadata={"report_type": "x", "finding_count": 1})
    assert check(ok) is None
    assert check(record("report.created", metadata={"report_type": "x", "finding_count": True}))[0] == "bad_type"


def test_adoption_events_are_user_initiated():
    assert check(record("operation.started", metadata={"operation_type": "policy_sync"})) is None
    reason, detail = check(record("operation.started", actor_type="system", actor_id="",
                                  metadata={"operation_type": "policy_sync"}))
    assert reason == "missing_field" and "user-initiated" in detail
    assert check(record("operation.started", actor_type="service", actor_id="scheduler",
                        metadata={"operation_type": "policy_sync"}))[0] == "bad_value"
    # other events may come from services (e.g. the request middleware)
    assert check(record("ticket.created", actor_type="service", actor_id="importer", subject_type="ticket",
                        metadata={"ticket_type": "incident"})) is None


# --- properties over arbitrary input ------------------------------------------------

_scalars = st.one_of(st.none(), st.booleans(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                     st.text(max_size=600), st.lists(st.integers(), max_size=3),
                     st.dictionaries(st.text(max_size=5), st.integers(), max_size=2))


@settings(max_examples=400, deadline=None)
@given(event=st.sampled_from(sorted(CATALOG)), key=st.one_of(st.text(max_size=20), st.sampled_from(
    sorted({k for e in CATALOG.values() for k in e.props}))), value=_scalars)
def test_check_never_raises_and_passes_only_safe_strings(event, key, value):
    spec = CATALOG[event]
    meta = {k: _example(p) for k, p in spec.props.items() if p.required}
    meta[key] = value
    rec = record(event, actor_type="user", actor_id="u1", subject_type=spec.subject_type, metadata=meta)
    verdict = check(rec)
    assert verdict is None or (verdict[0].__class__ is EventProblem and event in verdict[1])
    if verdict is None and isinstance(value, str):
        # whatever passed is short, has no spaces, no email, no query string
        assert len(value) <= 200 and " " not in value and "?" not in value
        assert not ("@" in value and "." in value.split("@")[-1])


def _example(prop):
    return {"id": "x1", "enum": prop.values[0] if prop.values else "", "bool": True, "timestamp": 1763780000000,
            "int": 1, "type": "policy_sync", "route": "/a/{b}", "money": 1250,
            "enum_list": ",".join(prop.values[:2])}[prop.kind]
