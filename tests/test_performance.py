"""Seed 001's performance tracking in the SDK: track_performance() (decorator and context
manager, sync and async), the middleware's per-minute route rollup, request_id from the
request context, the on_premise profile's pseudonyms, and deprecated events warned once and
counted. The recording stand-in validates every event with the catalog; the SDK tests at the
end use the real client (events captured at produce(), the broker port closed)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time

import pytest
from tally.producers.sdk import Client
from tally.producers.sdk.context import current, request_context
from tally.producers.sdk.middleware import MAX_ROLLUP_CELLS, Rollup, TallyASGIMiddleware
from tally.producers.sdk.performance import track_performance
from tally.schemas.catalog import CATALOG

from tally.config import Settings
from tests.test_middleware import Recorder, asgi_app, call_asgi


def test_decorator_reports_slow_and_failed_only():
    rec = Recorder()

    @track_performance(rec, "search_tickets", scope=("t1", "w1"), slow_ms=50)
    def search(delay: float, fail: bool = False) -> str:
        time.sleep(delay)
        if fail:
            raise LookupError("ticket jane@example.com")
        return "done"

    assert search(0) == "done" and rec.events == []
    assert search(0.06) == "done"
    with pytest.raises(LookupError):
        search(0, fail=True)
    slow, failed = rec.events
    assert slow["event"] == "service_operation.slow"
    assert slow["metadata"]["operation"] == "search_tickets" and slow["metadata"]["threshold_ms"] == 50
    assert slow["metadata"]["duration_ms"] >= 60 and slow["metadata"]["success"] is True
    assert failed["event"] == "service_operation.failed"
    assert failed["metadata"]["error_type"] == "lookup_error" and failed["metadata"]["success"] is False
    assert "jane" not in str(rec.events)


def test_async_decorator_and_context_managers():
    rec = Recorder()

    @track_performance(rec, "sync_mailbox", scope=("t1", "w1"), slow_ms=20)
    async def sync_mailbox() -> int:
        await asyncio.sleep(0.03)
        return 7

    async def main() -> None:
        assert await sync_mailbox() == 7
        async with track_performance(rec, "import_assets", scope=("t1", "w1"), slow_ms=20):
            await asyncio.sleep(0.03)
        with pytest.raises(ZeroDivisionError), track_performance(rec, "rebuild_index", scope=("t1", "w1")):
            1 / 0  # noqa: B018

    asyncio.run(main())
    assert [(e["event"], e["metadata"]["operation"]) for e in rec.events] == [
        ("service_operation.slow", "sync_mailbox"), ("service_operation.slow", "import_assets"),
        ("service_operation.failed", "rebuild_index")]


def test_scope_from_the_request_context_else_counted_as_no_scope():
    rec = Recorder()
    perf = track_performance(rec, "render_board", slow_ms=1)
    with request_context("req-5", ("t7", "w7")):
        perf.finished(0.01, None)
    perf.finished(0.01, None)  # outside a request, no scope: not sent, counted
    assert [(e["tenant_id"], e["workspace_id"]) for e in rec.events] == [("t7", "w7")]
    assert rec.drops == ["no_scope"]


def test_bad_operation_names_and_thresholds_fail_at_decoration():
    with pytest.raises(ValueError, match="operation"):
        track_performance(Recorder(), "Search Tickets")
    with pytest.raises(ValueError, match="slow_ms"):
        track_performance(Recorder(), "search", slow_ms=0)


def test_asgi_requests_carry_a_request_id_only_inside_the_request():
    seen = []

    async def app(scope, receive, send):
        seen.append(current())
        await send({"type": "http.response.start", "status": 200, "headers": []})

    mw = TallyASGIMiddleware(app, Recorder(), ("t1", "w1"))
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [(b"x-request-id", b"abc-123")]}
    asyncio.run(mw(scope, None, lambda m: asyncio.sleep(0)))
    bad = {**scope, "headers": [(b"x-request-id", b"jane@example.com <script>")]}
    asyncio.run(mw(bad, None, lambda m: asyncio.sleep(0)))
    assert seen[0].request_id == "abc-123" and seen[0].scope == ("t1", "w1")
    assert seen[1].request_id != seen[0].request_id and "jane" not in seen[1].request_id  # a fresh UUIDv7
    assert len(seen[1].request_id) == 36 and current() is None


def test_rollup_per_route_and_minute_with_errors_and_histogram():
    sent: list[tuple[int, dict]] = []
    now = [600.0]  # minute 10
    r = Rollup(lambda minute, cells: sent.append((minute, cells)), clock=lambda: now[0])
    w = ("t1", "w1")
    for ms, status in [(20, 200), (80, 200), (300, 200), (900, 500), (30, 404)]:
        r.add(w, "/tickets/{id}", "GET", status, ms / 1000, status >= 500)
    r.add(w, "/tickets", "POST", 201, 0.01, False)
    assert sent == []  # the minute is still open
    now[0] = 661.0  # minute 11: the first request sends minute 10
    r.add(w, "/tickets", "POST", 201, 0.01, False)
    [(minute, cells)] = sent
    assert minute == 10 and len(cells) == 2
    c = cells[(w, "/tickets/{id}", "GET")]
    assert c[:5] == [5, 1, 1, 20 + 80 + 300 + 900 + 30, 900]
    assert c[5:] == [2, 1, 0, 1, 1, 0, 0, 0]  # <=50, <=100, <=250, <=500, <=1000, <=2000, <=5000, above
    r.flush()
    assert sent[1][0] == 11 and sent[1][1][(w, "/tickets", "POST")][0] == 1


def test_rollup_cells_are_bounded():
    sent: list = []
    r = Rollup(lambda m, cells: sent.append(cells), clock=lambda: 0.0)
    for i in range(MAX_ROLLUP_CELLS + 50):
        r.add(("t", "w"), f"/r{i}", "GET", 200, 0.001, False)
    r.flush()
    [cells] = sent
    assert len(cells) == MAX_ROLLUP_CELLS + 1 and cells[(("t", "w"), "/*", "OTHER")][0] == 50


def test_rollup_events_pass_the_catalog_with_cumulative_buckets():
    rec = Recorder()
    mw = TallyASGIMiddleware(asgi_app, rec, ("t1", "w1"), slow_after=5, very_slow_after=6)
    for _ in range(3):
        call_asgi(mw, "/tickets/42")
    call_asgi(mw, "/tickets/42/down")
    mw.reporter.rollup.flush()
    [roll] = rec.rollups
    m = roll["metadata"]
    assert (m["route"], m["count"], m["errors"], m["le_5000ms"]) == ("/tickets/{ticket_id}", 4, 1, 4)
    assert m["le_50ms"] <= m["le_100ms"] <= m["le_5000ms"] and "request_id" not in m


# --- through the real client ------------------------------------------------------------

def _client(tmp_path, **env) -> Client:
    """A real client whose broker is unreachable: events wait in librdkafka's queue."""
    settings = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": "127.0.0.1:9", "TALLY_SDK_EXIT_FLUSH_SECONDS": "0",
                                  "TALLY_STATE_DIR": str(tmp_path), **env})
    return Client(settings, app="svc", strict=True, producer_overrides={"log_level": 0})


def test_on_premise_pseudonymises_actor_and_subject_ids(tmp_path):
    client = _client(tmp_path, TALLY_SDK_PROFILE="on_premise")
    p = client.pseudonyms
    assert p is not None and p.id("u_42") == p.id("u_42") != "u_42" and p.id("u_42").startswith("p_")
    assert (tmp_path / "secrets" / "sdk_pseudonym.key").stat().st_mode & 0o077 == 0
    assert client.track("ticket.resolved", tenant_id="t1", workspace_id="w1", actor="u_42",
                        subject=("ticket", "k_9"), metadata={"was_assigned": True})
    record = client._fast.plans["ticket.resolved"]  # the pieces learnt are the pseudonyms'
    assert "u_42" not in client._fast.users and p.id("u_42") in client._fast.users
    assert ("ticket", "k_9") not in record.subjects and ("ticket", p.id("k_9")) in record.subjects
    client.close(0)
    hosted = _client(tmp_path / "h")
    assert hosted.pseudonyms is None
    hosted.close(0)
    with pytest.raises(Exception, match="TALLY_SDK_PROFILE"):
        Settings.from_env({"TALLY_SDK_PROFILE": "cloud"})


def test_on_premise_middleware_sends_rollups_only():
    rec = Recorder()
    rec.profile = "on_premise"
    mw = TallyASGIMiddleware(asgi_app, rec, ("t1", "w1"), slow_after=0.1, very_slow_after=0.11)
    call_asgi(mw, "/tickets/1/slow")
    call_asgi(mw, "/tickets/1/down")
    mw.reporter.rollup.flush()
    assert rec.events == [] and rec.rollups[0]["metadata"]["count"] == 2


def test_deprecated_event_is_sent_warned_once_and_counted(monkeypatch, caplog, tmp_path):
    monkeypatch.setitem(CATALOG, "task.updated", dataclasses.replace(
        CATALOG["task.updated"], status="deprecated", replaced_by="task.status_changed"))
    client = _client(tmp_path)
    with caplog.at_level(logging.WARNING, logger="tally.sdk"):
        for _ in range(3):
            assert client.track("task.updated", tenant_id="t1", workspace_id="w1", actor="u1",
                                metadata={"status_changed": True}) is True
    warnings = [r for r in caplog.records if "deprecated" in r.getMessage()]
    assert len(warnings) == 1 and "task.status_changed" in warnings[0].getMessage()
    assert client.stats().deprecated == {"task.updated": 3} and client.stats().queued == 3
    client.close(0)
