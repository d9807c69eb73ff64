"""The catalog's privacy rules (issue #15): the detectors applied to ids and routes, `app`
validated, and occurred_at bounded to now ± the lateness window (SDK and worker)."""

from __future__ import annotations

import time
from datetime import UTC, datetime

import pytest
from tally.producers.sdk.record import Rejection, product_record
from tally.schemas.catalog import DEFAULT_WINDOW_MS, check
from tally.schemas.codec import Codec
from tally.schemas.reasons import EventProblem
from tally.streams.product import product_delta

from tests.test_catalog import record

CANARIES = {
    "stripe": "sk_live_4eC39HqLyjWDarjtT1zdp7dc",
    "github": "github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
    "slack": "xoxb-123456789012-abcdefghij",
    "aws": "AKIAIOSFODNN7EXAMPLE",
    "random": "Q3vT9xLp2mZ8rB6kN1wY4sD7fH0jG5cA",
    "card": "4111111111111111",
    "iban": "DE89370400440532013000",
    "ipv4": "203.0.113.7",
    "ipv6": "2001:db8::7",
    "phone": "555-123-4567",
}


@pytest.mark.parametrize("name", sorted(CANARIES))
@pytest.mark.parametrize("field", ["tenant_id", "workspace_id", "actor_id", "subject_id"])
def test_secrets_and_personal_data_are_no_ids(field, name):
    bad = check(record(**{field: CANARIES[name]}))
    assert bad is not None and bad[0] == EventProblem.UNSAFE_VALUE, bad
    assert CANARIES[name] not in bad[1]  # the detail names the field, never the value


@pytest.mark.parametrize("name", sorted(CANARIES))
def test_secrets_and_personal_data_are_no_metadata_ids(name):
    bad = check(record("timer.started", subject_type="timer",
                       metadata={"project_id": CANARIES[name], "has_description": True}))
    assert bad is not None and bad[0] == EventProblem.UNSAFE_VALUE and CANARIES[name] not in bad[1]


@pytest.mark.parametrize("route", [
    "/pay/4111111111111111", "/callback/eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.abcdefgh",
    "/keys/sk_live_4eC39HqLyjWDarjtT1zdp7dc", "/peer/203.0.113.7", "/iban/DE89370400440532013000",
    "/gh/github_pat_11ABCDEFG0123456789_abcdefghijklmnop",
])
def test_routes_with_secrets_or_personal_data_are_rejected(route):
    meta = {"route": route, "method": "GET", "status_class": "5xx", "duration_bucket": "<1s", "error_type": "http_5xx"}
    bad = check(record("api.request_failed", subject_type="", subject_id=None, metadata=meta))
    assert bad is not None and bad[0] == EventProblem.UNSAFE_VALUE, bad


def test_route_templates_and_ordinary_ids_pass():
    meta = {"route": "/tickets/{ticket_id}/v2", "method": "GET", "status_class": "5xx",
            "duration_bucket": "<1s", "error_type": "http_5xx"}
    assert check(record("api.request_failed", subject_type="", subject_id=None, metadata=meta)) is None
    for ok in ("1234567890", "0f8fad5b-d9cb-469f-a165-70867728950e", "pi_3MtwBwLkdIwHu7ix28a3tqPa"):
        assert check(record(tenant_id=ok)) is None, ok


@pytest.mark.parametrize("app", ["billing", "", "api-v2.worker"])
def test_app_names_pass(app):
    assert check(record(app=app)) is None


@pytest.mark.parametrize("app", ["bob@example.com", "my app", "x" * 65, "sk_live_4eC39HqLyjWDarjtT1zdp7dc", 42])
def test_bad_app_names_are_rejected_without_echoing_secrets(app):
    bad = check(record(app=app))
    assert bad is not None and bad[0] == EventProblem.UNSAFE_VALUE and "app" in bad[1]
    assert "sk_live" not in bad[1]


def test_occurred_at_is_bounded_to_now_plus_minus_the_window():
    now = int(time.time() * 1000)
    assert check(record(occurred_at=now + DEFAULT_WINDOW_MS), now) is None
    assert check(record(occurred_at=now - DEFAULT_WINDOW_MS), now) is None
    for off in (DEFAULT_WINDOW_MS + 1, -DEFAULT_WINDOW_MS - 1):
        bad = check(record(occurred_at=now + off), now)
        assert bad is not None and bad[0] == EventProblem.BAD_VALUE and "occurred_at" in bad[1]
    year_2099 = datetime(2099, 1, 1, tzinfo=UTC)
    assert check(record(occurred_at=year_2099), now, 3_600_000)[0] == EventProblem.BAD_VALUE
    assert check(record(occurred_at=year_2099)) is None  # no clock given: shape only


def test_the_sdk_refuses_an_occurred_at_far_from_now():
    with pytest.raises(Rejection) as err:
        product_record("report.created", "t1", "w1", "u1", ("stored_report", "r1"),
                       {"report_type": "x"}, datetime(2099, 1, 1, tzinfo=UTC), "app")
    assert err.value.problem == EventProblem.BAD_VALUE


def test_the_worker_sends_a_future_event_to_bad_rows():
    codec = Codec()
    now = int(time.time() * 1000)
    good = product_record("report.created", "tenant-1", "ws_42", "u_123", ("stored_report", "r1"),
                 {"report_type": "x"}, None, "billing")
    good["occurred_at"] = now + 3 * DEFAULT_WINDOW_MS
    delta, bad = product_delta(codec, codec.encode("product_event", good), "t", 0, 7, now, DEFAULT_WINDOW_MS)
    assert bad is not None and bad["reason"] == "invalid_event" and "occurred_at" in bad["detail"]
    assert not delta.product
    good["occurred_at"] = now
    delta, bad = product_delta(codec, codec.encode("product_event", good), "t", 0, 8, now, DEFAULT_WINDOW_MS)
    assert bad is None and delta.product
