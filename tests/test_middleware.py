"""Request-performance middleware for ASGI, WSGI and aiohttp.

Unit tests use a recording stand-in for the SDK client (every event it records
must pass the catalog); one integration test goes through the real SDK and a
real broker.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from confluent_kafka import Consumer, TopicPartition
from tally.producers.sdk import Client
from tally.producers.sdk.middleware import (
    TallyASGIMiddleware,
    TallyWSGIMiddleware,
    aiohttp_middleware,
    asgi,
    duration_bucket,
    error_type,
    wsgi,
)
from tally.schemas.catalog import check
from tally.schemas.codec import Codec

from tests.conftest import Env


class Recorder:
    """Stands in for the SDK client: records track() calls, validated by the catalog."""

    app = "web"
    disabled = False

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.rollups: list[dict] = []  # api.request_rollup, kept apart: sent when a minute ends
        self.drops: list[str] = []

    def track(self, event, *, tenant_id, workspace_id, actor=None, subject=None, metadata=None):
        rec = {"event": event, "tenant_id": tenant_id, "workspace_id": workspace_id,
               "actor_type": actor[0], "actor_id": actor[1], "occurred_at": 0, "metadata": metadata}
        assert check(rec) is None, check(rec)
        (self.rollups if event == "api.request_rollup" else self.events).append(rec)
        return True

    def count_drop(self, reason, detail, n=1):
        self.drops.append(reason)


SCOPE = ("tenant-1", "ws-1")


# --- ASGI ------------------------------------------------------------------------

async def asgi_app(scope, receive, send):
    path = scope["path"]
    scope["route"] = "/tickets/{ticket_id}" if path.startswith("/tickets/") else None
    if path.endswith("/slow"):
        await asyncio.sleep(0.12)
    if path.endswith("/boom"):
        raise ValueError("secret detail that must not be reported")
    status = 503 if path.endswith("/down") else 200
    await send({"type": "http.response.start", "status": status, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


def call_asgi(app, path, query=b""):
    sent = []

    async def receive():
        return {"type": "http.request", "body": b""}

    async def send(msg):
        sent.append(msg)

    scope = {"type": "http", "method": "GET", "path": path, "query_string": query, "headers": []}
    asyncio.run(app(scope, receive, send))
    return sent


def test_asgi_fast_requests_report_nothing():
    rec = Recorder()
    app = TallyASGIMiddleware(asgi_app, rec, SCOPE, slow_after=0.1, very_slow_after=0.11)
    sent = call_asgi(app, "/tickets/42")
    assert sent[0]["status"] == 200 and rec.events == []


def test_asgi_slow_request_reports_template_not_url():
    rec = Recorder()
    app = TallyASGIMiddleware(asgi_app, rec, SCOPE, slow_after=0.1, very_slow_after=0.11)
    call_asgi(app, "/tickets/42/slow", b"email=jane@example.com")
    names = [e["event"] for e in rec.events]
    assert names == ["api.request_slow", "api.request_very_slow"]
    meta = rec.events[0]["metadata"]
    assert meta["route"] == "/tickets/{ticket_id}" and meta["method"] == "GET"
    assert meta["status_class"] == "2xx" and "42" not in str(rec.events) and "jane" not in str(rec.events)


def test_asgi_server_errors_and_exceptions():
    rec = Recorder()
    app = TallyASGIMiddleware(asgi_app, rec, SCOPE)
    call_asgi(app, "/tickets/1/down")
    with pytest.raises(ValueError):
        call_asgi(app, "/other/boom")
    assert [e["event"] for e in rec.events] == ["api.request_failed", "api.request_failed"]
    down, boom = (e["metadata"] for e in rec.events)
    assert down["status_class"] == "5xx" and down["error_type"] == "http_5xx"
    assert boom["error_type"] == "value_error" and boom["route"] == "/*"
    assert "secret" not in str(rec.events)


def test_scope_function_can_skip_requests():
    rec = Recorder()
    app = TallyASGIMiddleware(asgi_app, rec, lambda scope: None)
    call_asgi(app, "/tickets/1/down")
    assert rec.events == []


# --- WSGI ------------------------------------------------------------------------

def wsgi_app(environ, start_response):
    environ["tally.route"] = "/reports/<report_id>"
    if environ["PATH_INFO"].endswith("/slow"):
        time.sleep(0.12)
    if environ["PATH_INFO"].endswith("/boom"):
        raise KeyError("x")
    start_response("500 Internal Server Error" if environ["PATH_INFO"].endswith("/down") else "200 OK", [])
    return [b"ok"]


def call_wsgi(app, path):
    out = {}

    def start_response(status, headers, exc_info=None):
        out["status"] = status

    body = app({"REQUEST_METHOD": "POST", "PATH_INFO": path, "QUERY_STRING": "q=1"}, start_response)
    return out["status"], b"".join(body)


def test_wsgi_reports_slow_and_failed_only():
    rec = Recorder()
    app = TallyWSGIMiddleware(wsgi_app, rec, SCOPE, slow_after=0.1, very_slow_after=5)
    assert call_wsgi(app, "/reports/7") == ("200 OK", b"ok")
    assert rec.events == []
    call_wsgi(app, "/reports/7/slow")
    call_wsgi(app, "/reports/7/down")
    with pytest.raises(KeyError):
        call_wsgi(app, "/reports/7/boom")
    assert [e["event"] for e in rec.events] == ["api.request_slow", "api.request_failed", "api.request_failed"]
    assert all(e["metadata"]["route"] == "/reports/<report_id>" and e["metadata"]["method"] == "POST"
               for e in rec.events)
    assert rec.events[2]["metadata"]["error_type"] == "key_error"


def test_disabled_returns_the_app_unchanged():
    rec = Recorder()
    rec.disabled = True
    assert asgi(asgi_app, rec, SCOPE) is asgi_app and wsgi(wsgi_app, rec, SCOPE) is wsgi_app


def test_buckets_and_error_types():
    assert [duration_bucket(s) for s in (0.2, 1.5, 3, 7, 11)] == ["<1s", "1s-2s", "2s-5s", "5s-10s", "10s+"]
    assert error_type(TimeoutError()) == "timeout_error" and error_type(None) == "http_5xx"


# --- aiohttp, through the real SDK and broker -----------------------------------

@pytest.mark.integration
def test_aiohttp_request_events_rollups_and_request_id_reach_kafka(tally_env: Env):
    settings = tally_env.settings
    client = Client(settings, app="web", strict=True)

    async def slow(request):
        await asyncio.sleep(0.15)
        # tracked by the handler: carries the request's id without being told
        client.track("ticket.created", tenant_id="tenant-9", workspace_id="ws-9", actor="u_1",
                     subject=("ticket", "k_1"), metadata={"ticket_type": "incident"})
        return web.Response(text="ok")

    async def fast(request):
        return web.Response(text="ok")

    async def main():
        app = web.Application(middlewares=[aiohttp_middleware(client, ("tenant-9", "ws-9"),
                                                              slow_after=0.1, very_slow_after=10)])
        app.router.add_get("/projects/{project_id}/export", slow)
        app.router.add_get("/health", fast)
        async with TestClient(TestServer(app)) as http:
            for _ in range(3):
                assert (await http.get("/health")).status == 200
            assert (await http.get("/projects/p-123/export?token=abc",
                                   headers={"X-Request-ID": "req-77"})).status == 200
            assert (await http.get("/nope")).status == 404

    asyncio.run(main())
    client.close()  # sends the minute's rollups, then flushes
    assert client.stats().delivered == 5 and client.stats().dropped == {}

    topic = settings.topic("product.events")
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": uuid.uuid4().hex,
                         "auto.offset.reset": "earliest"})
    parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    msgs = []
    deadline = time.monotonic() + 30
    while len(msgs) < 5 and time.monotonic() < deadline:
        m = consumer.poll(0.5)
        if m is not None and not m.error():
            msgs.append(m)
    consumer.close()
    records = [Codec().decode("product_event", m.value()) for m in msgs]
    by_event: dict[str, list[dict]] = {}
    for rec in records:
        assert rec["tenant_id"] == "tenant-9"
        by_event.setdefault(rec["event"], []).append(rec["metadata"])
    [slow_meta] = by_event["api.request_slow"]
    assert {k: slow_meta[k] for k in ("route", "method", "status_class", "duration_bucket", "request_id")} == {
        "route": "/projects/{project_id}/export", "method": "GET", "status_class": "2xx",
        "duration_bucket": "<1s", "request_id": "req-77"}
    assert by_event["ticket.created"][0]["request_id"] == "req-77"  # propagated through contextvars
    rollups = {(r["route"], r["method"]): r for r in by_event["api.request_rollup"]}
    assert sorted(rollups) == [("/*", "GET"), ("/health", "GET"), ("/projects/{project_id}/export", "GET")]
    health, export, missing = rollups[("/health", "GET")], rollups[("/projects/{project_id}/export", "GET")], \
        rollups[("/*", "GET")]
    assert (health["count"], health["errors"], health["client_errors"]) == (3, 0, 0)
    assert (missing["count"], missing["client_errors"]) == (1, 1)
    assert export["count"] == 1 and export["duration_max_ms"] >= 150 and export["le_100ms"] == 0
    assert export["le_5000ms"] == 1 and "request_id" not in export  # a rollup belongs to no request
    assert all(b"p-123" not in m.value() and b"token" not in m.value() for m in msgs)
