"""Product telemetry through the worker: catalog re-validation, family/day counts, active workspaces."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import pytest
from tally.schemas.catalog import CATALOG
from tally.schemas.codec import default_codec

from tests.conftest import wait_for
from tests.stream_support import decoded, latest_aggregates, produce

pytestmark = pytest.mark.integration


def event(tenant: str, workspace: str, name: str = "report.created", **over) -> dict:
    rec = {"event_id": str(uuid.uuid4()), "event": name, "feature_area": CATALOG[name].feature_area,
           "tenant_id": tenant, "workspace_id": workspace, "actor_type": "user", "actor_id": "u_1",
           "subject_type": CATALOG[name].subject_type, "subject_id": "r_1", "occurred_at": datetime.now(UTC),
           "app": "billing", "metadata": {"report_type": "entra_admin_roles", "format": "pdf", "finding_count": 3}}
    rec.update(over)
    return rec


def test_product_events_counted_per_family_tenant_and_workspace(tally_env, spawn):
    s = tally_env.settings
    codec = default_codec()
    good = [event("t1", f"ws_{i % 3}") for i in range(9)] + [event("t2", "ws_9") for _ in range(4)]
    invalid = event("t1", "ws_0", metadata={"report_type": "x", "email": "a@b.example"})
    records = [codec.encode("product_event", e) for e in good + [invalid]]
    produce(s, "product.events", records, keys=[e["tenant_id"].encode() for e in good + [invalid]])
    spawn(tally_env, "worker")
    day = int(datetime.now(UTC).timestamp() * 1000) // 86_400_000 * 86_400_000

    def totals():
        got = latest_aggregates(s)
        return (got.get(("product_family_day", "t1", "report", day)), got.get(("product_family_day", "t2", "report", day)),
                got.get(("active_workspaces_day", "*", "", day)))

    wait_for(lambda: totals() == ((9, 3), (4, 1), (13, 4)), 90, "product totals")
    # bad rows and totals go out through different producers: either may land first
    wait_for(lambda: decoded(s, "bad-rows", "bad_row"), 30, "the bad row")
    bad = decoded(s, "bad-rows", "bad_row")
    assert [b["reason"] for b in bad] == ["invalid_event"]
    assert bad[0]["source_topic"] == s.topic("product.events")


def test_a_product_event_sent_twice_is_counted_once_in_the_warehouse(tally_env, spawn):
    """An SDK that sends an event again after a crash: the same event_id in a new record."""
    import re
    import urllib.request

    from tests.helpers import query_rows
    from tests.test_stream_dedup import start_sink_and_worker

    s = tally_env.settings
    codec = default_codec()
    again = event("t1", "ws_1")
    sent = [again, event("t1", "ws_2"), again, event("t1", "ws_3")]  # ws_3 last: seen, all were handled
    sink, worker = start_sink_and_worker(tally_env, spawn)
    produce(s, "product.events", [codec.encode("product_event", e) for e in sent], keys=[b"t1"] * len(sent))

    def family() -> list:
        return query_rows(s, "SELECT events, workspaces FROM product_family_daily WHERE tenant = 't1'")

    try:
        wait_for(lambda: family() and family()[0][1] == 3, 120, "the product totals in ClickHouse")
    except AssertionError:
        print(worker.output()[-3000:], sink.output()[-3000:])
        raise
    assert family() == [[3, 3]]
    active = "SELECT active_workspaces, events FROM active_workspaces_daily WHERE tenant = '*'"
    wait_for(lambda: query_rows(s, active) == [[3, 3]], 60, "active workspaces")
    wait_for(lambda: query_rows(s, "SELECT count() FROM product_events FINAL")[0][0] == 3, 60, "raw rows")
    assert query_rows(s, "SELECT uniqExact(event_id) FROM product_events")[0][0] == 3
    url = re.search(r"metrics on (http://\S+/metrics)", worker.output()).group(1)
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read().decode()
    assert 'tally_worker_repeated_events_total{kind="product"} 1.0' in body
    assert 'tally_worker_remembered_event_ids{kind="product"} 3.0' in body
