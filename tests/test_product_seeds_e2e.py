"""Seeds 001 and 004 end to end: the real SDK -> real broker -> real stream worker and sink ->
real chDB. Money amounts sum per currency, enum lists work with has(), request_id and the
envelope survive, the middleware's rollups give error rate and p95 per route, and the named
views answer the seeds' questions. An event the catalog rejects (an unsorted list) goes to
bad rows at the worker and the sink."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest
from tally.ops.stack import http_ok, worker_ready
from tally.producers.sdk import Client
from tally.producers.sdk.context import request_context
from tally.producers.sdk.middleware import TallyASGIMiddleware
from tally.producers.sdk.performance import track_performance
from tally.schemas.catalog import CATALOG, LATENCY_BUCKETS_MS
from tally.schemas.codec import default_codec

from tests.conftest import REPO, wait_for
from tests.helpers import query_rows
from tests.stream_support import decoded, latest_aggregates, produce

pytestmark = pytest.mark.integration

T, W = "acme", "ws_1"


def _track_seed_events(client: Client) -> int:
    """The events of a working day at a small PSA and time-tracking customer; returns how many."""
    track = client.track
    n = 0

    def t(event: str, actor: str = "u_1", subject=None, **metadata) -> None:
        nonlocal n
        assert track(event, tenant_id=T, workspace_id=W, actor=actor, subject=subject, metadata=metadata)
        n += 1

    with request_context("req-100", (T, W)):
        t("ticket.created", subject=("ticket", "k1"), ticket_type="incident", priority_id="p_high",
          category_id="c_net", success=True, duration_ms=42)
        t("ticket.created", subject=("ticket", "k2"), ticket_type="incident", priority_id="p_low")
    t("ticket.resolved", subject=("ticket", "k1"), priority_id="p_high", time_to_resolution_minutes=90)
    t("ticket.resolved", subject=("ticket", "k2"), priority_id="p_low", time_to_resolution_minutes=30)
    t("ticket.updated", subject=("ticket", "k1"), fields_changed=["status", "assignee", "status"])
    t("ticket.searched", query_length=12, filters=("status", "priority"), result_count=7, duration_ms=85)
    t("auth.login_failed", provider="credentials", failure_reason="invalid_password")
    t("auth.login_failed", provider="credentials", failure_reason="invalid_password")
    t("auth.login_failed", provider="google", failure_reason="oauth_error")
    t("timer.started", subject=("timer", "tm1"), project_id="pr_1")
    t("timer.stopped", subject=("timer", "tm1"), project_id="pr_1", duration_seconds=3600)
    t("timer.idle_detected", subject=("timer", "tm2"), idle_minutes=15, duration_seconds=1800)
    t("invoice.created", subject=("invoice", "i1"), total_amount=129_900, currency="EUR", num_line_items=3)
    t("invoice.created", subject=("invoice", "i2"), total_amount=50_050, currency="EUR")
    t("invoice.created", subject=("invoice", "i3"), total_amount=1_000, currency="USD")
    t("invoice.paid", subject=("invoice", "i1"), amount=129_900, currency="EUR")
    t("project.updated", subject=("project", "pr_1"), fields_changed={"budget", "name"})
    t("admin.settings_updated", settings_changed=["timezone", "currency"])

    @track_performance(client, "search_tickets", scope=(T, W), slow_ms=20)
    def search() -> None:
        time.sleep(0.03)

    search()
    n += 1
    return n


def _requests(client: Client) -> int:
    """Requests through the ASGI middleware: 3 fast ones and a 503 on one route."""

    async def app(scope, receive, send):
        scope["route"] = "/tickets/{ticket_id}"
        await send({"type": "http.response.start", "status": 503 if scope["path"].endswith("down") else 200,
                    "headers": []})

    mw = TallyASGIMiddleware(app, client, (T, W), slow_after=10, very_slow_after=20)

    async def main() -> None:
        async def send(message):
            return None

        for path in ("/tickets/1", "/tickets/2", "/tickets/3", "/tickets/4/down"):
            await mw({"type": "http", "method": "GET", "path": path, "headers": []}, None, send)

    asyncio.run(main())
    return 2  # api.request_failed for the 503, and one rollup (sent at close)


def test_seed_events_through_worker_and_sink(tally_env, spawn):
    s = tally_env.settings
    client = Client(s, app="psa", strict=True)
    sent = _track_seed_events(client) + _requests(client)
    client.close(20)
    assert client.stats().delivered == sent and client.stats().dropped == {}
    # an event the SDK would never send: an unsorted list, straight onto the topic
    codec = default_codec()
    bad = {"event_id": str(uuid.uuid4()), "event": "project.updated", "feature_area": "project", "tenant_id": T,
           "workspace_id": W, "actor_type": "user", "actor_id": "u_1", "subject_type": "project",
           "subject_id": "pr_1", "occurred_at": datetime.now(UTC), "app": "psa",
           "metadata": {"fields_changed": "status,name"}}
    produce(s, "product.events", [codec.encode("product_event", bad)], keys=[T.encode()])

    spawn(tally_env, "sink")
    spawn(tally_env, "worker")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    wait_for(lambda: worker_ready(s), 90, "worker in its consumer group")
    wait_for(lambda: query_rows(s, "SELECT count() FROM product_events")[0][0] == sent, 90, f"{sent} product rows")

    # the worker counted the new feature areas, and sent the bad one to bad rows
    day = int(datetime.now(UTC).timestamp() * 1000) // 86_400_000 * 86_400_000
    wait_for(lambda: latest_aggregates(s).get(("product_family_day", T, "invoice", day)) == (4, 1), 60,
             "the worker's invoice family count")
    wait_for(lambda: any(b["component"] == "worker" for b in decoded(s, "bad-rows", "bad_row")), 30, "worker bad row")
    worker_bad = [b for b in decoded(s, "bad-rows", "bad_row") if b["component"] == "worker"]
    assert [b["reason"] for b in worker_bad] == ["invalid_event"] and "sorted" in worker_bad[0]["detail"]

    q = lambda sql: query_rows(s, sql)  # noqa: E731
    # money: summable per currency
    assert q("SELECT metadata['currency'], sum(toInt64(metadata['total_amount'])) FROM product_events FINAL "
             "WHERE event = 'invoice.created' GROUP BY 1 ORDER BY 1") == [["EUR", 179_950], ["USD", 1_000]]
    # lists: canonical and usable with has()
    assert q("SELECT metadata['fields_changed'] FROM product_events WHERE event = 'ticket.updated'") == [
        ["assignee,status"]]
    assert q("SELECT count() FROM product_events WHERE has(splitByChar(',', metadata['fields_changed']), 'name')"
             ) == [[1]]
    # the envelope: request_id from the request context, success and duration_ms
    assert q("SELECT metadata['request_id'], metadata['success'], metadata['duration_ms'] FROM product_events "
             "WHERE event = 'ticket.created' ORDER BY metadata['priority_id']") == [
        ["req-100", "true", "42"], ["req-100", "", ""]]
    # the named views
    assert q(f"SELECT status, currency, invoices, amount_minor FROM invoice_totals_daily WHERE tenant = '{T}' "
             "ORDER BY status, currency") == [["created", "EUR", 2, 179_950], ["created", "USD", 1, 1_000],
                                             ["paid", "EUR", 1, 129_900]]
    assert q("SELECT priority_id, created, resolved, avg_resolution_minutes FROM ticket_volume_daily "
             "ORDER BY priority_id") == [["p_high", 1, 1, 90.0], ["p_low", 1, 1, 30.0]]
    assert q("SELECT failure_reason, sum(failures) FROM login_failures_daily GROUP BY 1 ORDER BY 1") == [
        ["invalid_password", 2], ["oauth_error", 1]]
    assert q("SELECT started, stopped, idle_stopped, tracked_seconds FROM timer_usage_daily") == [[1, 1, 1, 5400]]
    assert q("SELECT operation, slow, failed FROM slow_operations_daily") == [["search_tickets", 1, 0]]
    [[route, requests, errors, error_rate, p95_ms]] = q(
        "SELECT route, requests, errors, error_rate, p95_ms FROM api_routes_daily")
    assert (route, requests, errors, error_rate) == ("/tickets/{ticket_id}", 4, 1, 0.25)
    assert p95_ms in LATENCY_BUCKETS_MS  # the smallest bound holding 95% (the durations are the machine's)
    # the sink rejected the unsorted list too (defence in depth), naming the key
    wait_for(lambda: q("SELECT count() FROM bad_rows WHERE component = 'sink'")[0][0] == 1, 30, "sink bad row")
    detail = q("SELECT reason, detail FROM bad_rows WHERE component = 'sink'")[0]
    assert detail[0] == "invalid_event" and "'fields_changed'" in detail[1]

    # catalog health: volume, last seen, rejections by reason, never fired; then the lint
    out = subprocess.run([sys.executable, "-m", "tally.ops", "catalog", "report", "--format", "json"], cwd=REPO,
                         env=tally_env.child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    rows = {r["event"]: r for r in json.loads(out.stdout)["data"]}
    assert list(rows) == list(CATALOG)  # every catalog event, in catalog order
    assert int(rows["invoice.created"]["events"]) == 3 and rows["invoice.created"]["never_fired"] == 0
    assert rows["invoice.created"]["last_seen"].startswith(datetime.now(UTC).date().isoformat()[:7])
    assert int(rows["project.updated"]["rejected"]) == 1  # the worker's and the sink's bad rows: one record
    assert [(problem, int(n)) for problem, n in rows["project.updated"]["rejected_by_reason"]] == [("bad_value", 1)]
    assert rows["system.error"]["never_fired"] == 1 and int(rows["system.error"]["events"]) == 0
    assert rows["system.error"]["last_seen"] is None and rows["system.error"]["status"] == "active"
    _api_report_equals_the_cli(tally_env, spawn, rows)


def _api_report_equals_the_cli(tally_env, spawn, cli_rows: dict) -> None:
    """The Stats API's catalog report answers the same rows, for a key covering every tenant only."""
    from tests.test_api import api, new_key

    s = tally_env.settings
    spawn(tally_env, "dashboard")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.dashboard_port}/healthz"), 30, "dashboard")
    route = "/api/tally/v1/catalog"
    status, got = api(s, new_key(tally_env, "--site", "example.com", "--tenant", T), None, route)
    assert status == 403 and "every tenant" in got["error"], got
    key = new_key(tally_env, "--tenant", "*")
    assert api(s, key, None, route + "?from=2026-13-01")[0] == 400
    status, got = api(s, key, None, route)
    assert status == 200, got
    assert [e["event"] for e in got["events"]] == list(cli_rows)
    for e in got["events"]:
        want = cli_rows[e["event"]]
        assert (e["status"], e["events"], e["rejected"], e["never_fired"]) == (
            want["status"], int(want["events"]), int(want["rejected"]), bool(int(want["never_fired"])))
        assert e["rejected_by_reason"] == {p: int(n) for p, n in want["rejected_by_reason"]}
