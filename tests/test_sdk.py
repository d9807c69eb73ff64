"""The product SDK against a real Kafka broker: round trip, validation, opt-out, outage."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition
from tally.producers.sdk import AsyncClient, Client, RejectedEvent, Subject
from tally.schemas.codec import MAGIC, Codec

from tally.config import Settings
from tests.conftest import REPO, Broker, Env, free_port_pair, wait_for

pytestmark = pytest.mark.integration


def read_all(settings: Settings, expect: int, timeout: float = 30.0) -> list:
    """Every record of the product topic, with a plain confluent-kafka consumer."""
    topic = settings.topic("product.events")
    consumer = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": f"t-{uuid.uuid4().hex}",
                         "auto.offset.reset": "earliest", "enable.auto.commit": False})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        consumer.assign([TopicPartition(topic, p, 0) for p in meta.partitions])
        out: list = []
        deadline = time.monotonic() + timeout
        while len(out) < expect and time.monotonic() < deadline:
            msg = consumer.poll(0.5)
            if msg is not None and not msg.error():
                out.append(msg)
        # a little longer, to catch records that should not be there
        end = time.monotonic() + 1.0
        while time.monotonic() < end:
            msg = consumer.poll(0.2)
            if msg is not None and not msg.error():
                out.append(msg)
        return out
    finally:
        consumer.close()


def test_round_trip_plain_consumer_decodes_same_values(tally_env: Env):
    settings = tally_env.settings
    # An explicit occurred_at must lie within now ± 48 h (catalog.DEFAULT_WINDOW_MS).
    at = (datetime.now(UTC) - timedelta(hours=1)).replace(microsecond=123000)
    sent = [
        ("onboarding.checkpoint_completed", "tenant-a", ("onboarding_session", "os_1"),
         {"checkpoint": "permissions_granted", "step_index": 2, "resumed": False}),
        ("report.created", "tenant-b", Subject("stored_report", "r_9"),
         {"report_type": "permission_posture", "format": "json", "finding_count": 0}),
        ("timer.started", "tenant-a", ("timer", "tm_3"),
         {"project_id": "p_1", "task_id": None, "has_description": True}),
    ]
    with Client(settings, app="test-app", strict=True) as client:
        for event, tenant, subject, metadata in sent:
            assert client.track(event, tenant_id=tenant, workspace_id="ws_1", actor="u_42",
                                subject=subject, metadata=metadata, occurred_at=at)
        # Again without occurred_at: now every piece is known, so the fast path
        # (tally.producers.sdk.pieces) encodes them; the consumer must not tell.
        before = int(time.time() * 1000)
        for event, tenant, subject, metadata in sent:
            assert client.track(event, tenant_id=tenant, workspace_id="ws_1", actor="u_42",
                                subject=subject, metadata=metadata)
        assert client.flush(20) == 0
        stats = client.stats()
    assert (stats.queued, stats.delivered, stats.dropped) == (6, 6, {})

    msgs = read_all(settings, 6)
    assert len(msgs) == 6
    # Decoded with the repo's schemas only (a fresh codec, no registry).
    codec = Codec()
    got: dict[str, list] = {}
    for m in msgs:
        assert m.value()[:2] == MAGIC  # single-object encoding
        rec = codec.decode("product_event", m.value())
        assert m.key().decode() == rec["tenant_id"]  # keyed by tenant
        got.setdefault(rec["event"], []).append(rec)
    assert len({r["event_id"] for recs in got.values() for r in recs}) == 6
    for event, tenant, subject, metadata in sent:
        first, second = sorted(got[event], key=lambda r: r["occurred_at"])
        assert second["occurred_at"].timestamp() * 1000 >= before
        assert {k: v for k, v in first.items() if k not in ("event_id", "occurred_at")} == \
            {k: v for k, v in second.items() if k not in ("event_id", "occurred_at")}
        rec = first
        assert rec["tenant_id"] == tenant and rec["workspace_id"] == "ws_1"
        assert (rec["actor_type"], rec["actor_id"]) == ("user", "u_42")
        assert (rec["subject_type"], rec["subject_id"]) == tuple(subject)
        assert rec["occurred_at"] == at and rec["app"] == "test-app"
        assert rec["metadata"] == metadata
        assert rec["feature_area"] == event.split(".")[0]
        assert uuid.UUID(str(rec["event_id"])).version == 7


@pytest.mark.parametrize("metadata,key", [
    ({"report_type": "x", "owner": "jane.doe@example.com"}, "owner"),        # unknown key (and an email)
    ({"report_type": "jane.doe@example.com"}, "report_type"),                # email value
    ({"report_type": "n" * 500}, "report_type"),                             # 500-char note
    ({"report_type": "https://app.example.com/r?token=abc"}, "report_type"),  # URL with query string
    ({"report_type": "x", "note": "looks fine"}, "note"),                     # unknown key
])
def test_unsafe_metadata_rejected_naming_the_key(tally_env: Env, metadata, key):
    settings = tally_env.settings
    with Client(settings, strict=True) as strict:
        with pytest.raises(RejectedEvent) as exc:
            strict.track("report.created", tenant_id="t", workspace_id="w", actor="u_1", metadata=metadata)
        assert f"'{key}'" in str(exc.value) and "report.created" in str(exc.value)
        assert exc.value.reason in ("unsafe_value", "unknown_key")
    with Client(settings) as lenient:  # production default: drop and count, never raise
        assert lenient.track("report.created", tenant_id="t", workspace_id="w", actor="u_1",
                             metadata=metadata) is False
        assert lenient.stats().dropped == {exc.value.reason: 1}
        assert lenient.stats().queued == 0


def test_unknown_event_rejected(tally_env: Env):
    settings = tally_env.settings
    with Client(settings, strict=True) as strict, pytest.raises(RejectedEvent, match="unknown_event.*user_signed_up"):
        strict.track("user_signed_up", tenant_id="t", workspace_id="w")
    with Client(settings) as lenient:
        assert not lenient.track("user_signed_up", tenant_id="t", workspace_id="w")
        assert not lenient.track("report.created", tenant_id="", workspace_id="w",
                                 metadata={"report_type": "x"})
        assert lenient.stats().dropped == {"unknown_event": 1, "missing_field": 1}
    assert read_all(settings, 0) == []  # nothing rejected reached Kafka


def test_disabled_is_a_no_op(tally_env: Env):
    settings = Settings.from_env({**tally_env.vars, "TALLY_DISABLED": "1"})
    client = Client(settings, strict=True)
    assert client.track("not.an_event", tenant_id="", workspace_id="") is False
    assert client.delivery is None and client.stats().disabled and client.stats().queued == 0
    client.close()


def test_async_flavour(tally_env: Env):
    settings = tally_env.settings

    async def main() -> None:
        async with AsyncClient(settings, strict=True) as client:
            for _ in range(2):  # the second one is served by the fast path
                ok = await client.track("review_pack.requested", tenant_id="t1", workspace_id="w1",
                                        actor="u_7", subject=("review_pack", "rp_1"),
                                        metadata={"include_pii": False, "section_count": 3})
                assert ok
            assert await client.flush(20) == 0
            assert client.stats().delivered == 2

    asyncio.run(main())
    msgs = read_all(settings, 2)
    assert len(msgs) == 2
    for msg in msgs:
        rec = Codec().decode("product_event", msg.value())
        assert rec["event"] == "review_pack.requested" and rec["actor_id"] == "u_7"
        assert rec["metadata"] == {"include_pii": False, "section_count": 3}


def test_flush_at_interpreter_exit(tally_env: Env):
    code = (
        "from tally.producers.sdk import Client\n"
        "c = Client()\n"
        "for i in range(50):\n"
        "    assert c.track('operation.started', tenant_id='t', workspace_id='w', actor='u',\n"
        "                   metadata={'operation_type': 'policy_sync'})\n"
        # no flush, no close: the atexit hook must deliver them
    )
    subprocess.run([sys.executable, "-c", code], env=tally_env.child_env(), cwd=REPO, check=True,
                   timeout=60)
    assert len(read_all(tally_env.settings, 50)) == 50


def test_broker_outage_bounded_and_counted_then_recovers(tmp_path: Path):
    """Own broker (not the shared session one): stop it, track stays bounded, drops are
    counted; restart it, events flow again."""
    from tally.infra import kafka

    from tally.topics import ensure_topics

    kafka.ensure_jars()
    port = free_port_pair()
    data = tmp_path / "kafka"
    broker = Broker(f"127.0.0.1:{port}", "kafka", data_dir=data,
                    command=kafka.broker_command(data, port, 384), log=tmp_path / "broker.log")
    broker.start()
    client = None
    try:
        settings = Settings.from_env({
            "TALLY_KAFKA_BOOTSTRAP": broker.bootstrap, "TALLY_TOPIC_PREFIX": "outage.",
            "TALLY_TOPIC_PARTITIONS": "2", "TALLY_STATE_DIR": str(tmp_path / "state"),
            "TALLY_SDK_QUEUE_EVENTS": "500", "TALLY_SDK_MAX_BLOCK_MS": "50",
            "TALLY_SDK_DELIVERY_TIMEOUT_MS": "3000",
        })
        ensure_topics(settings)
        client = Client(settings)

        def track() -> bool:
            return client.track("operation.started", tenant_id="t1", workspace_id="w1", actor="u1",
                                metadata={"operation_type": "policy_sync"})

        assert all(track() for _ in range(20))
        assert client.flush(30) == 0 and client.stats().delivered == 20

        broker.stop()
        slowest = 0.0
        for _ in range(1000):
            t0 = time.monotonic()
            track()
            slowest = max(slowest, time.monotonic() - t0)
        # bounded by TALLY_SDK_MAX_BLOCK_MS (50 ms), with slack for a loaded machine
        assert slowest < 1.0, slowest
        # The queue holds 500: the rest is dropped as queue_full; queued events time
        # out after 3 s (delivery_failed). Every one of the 1000 is accounted for.
        assert client.stats().dropped.get("queue_full", 0) >= 1
        wait_for(lambda: client.stats().pending == 0, 30, "queued events to time out")
        stats = client.stats()
        assert stats.dropped["delivery_failed"] >= 1
        assert stats.dropped["queue_full"] + stats.dropped["delivery_failed"] == 1000
        assert stats.delivered == 20

        broker.start()
        before = client.stats().delivered
        accepted = sum(track() for _ in range(30))
        assert accepted == 30
        assert client.flush(60) == 0
        assert client.stats().delivered - before == 30
        assert len(read_all(settings, 50)) == 50  # 20 before the outage + 30 after
    finally:
        if client is not None:
            client.close(1)
        broker.stop()


def test_datetime_metadata_is_sent_as_epoch_ms(tally_env: Env):
    started = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    with Client(tally_env.settings, strict=True) as client:
        assert client.track("timer.stopped", tenant_id="t", workspace_id="w", actor="u1",
                            metadata={"project_id": "p1", "started_at": started, "duration_seconds": 60})
        with pytest.raises(RejectedEvent, match="'duration_seconds'"):  # a datetime is no integer
            client.track("timer.stopped", tenant_id="t", workspace_id="w",
                         metadata={"project_id": "p1", "duration_seconds": started})
        with pytest.raises(RejectedEvent, match="naive datetime"):
            client.track("timer.stopped", tenant_id="t", workspace_id="w",
                         metadata={"project_id": "p1", "started_at": datetime(2026, 5, 1)})
        assert client.flush(20) == 0
    [msg] = read_all(tally_env.settings, 1)
    meta = Codec().decode("product_event", msg.value())["metadata"]
    assert meta["started_at"] == int(started.timestamp() * 1000)


@pytest.mark.parametrize("kwargs", [
    {"metadata": ["report_type", "x"]},
    {"metadata": {"report_type": "x"}, "actor": ("user", "u", "extra")},
    {"metadata": {"report_type": "x"}, "actor": 42},
    {"metadata": {"report_type": "x"}, "subject": "stored_report"},
    {"metadata": {"report_type": "x"}, "occurred_at": "yesterday"},
    {"metadata": {"report_type": "x"}, "occurred_at": datetime(2026, 1, 1)},
])
def test_garbage_arguments_never_crash_lenient_mode(tally_env: Env, kwargs):
    with Client(tally_env.settings) as client:
        kwargs = {"actor": "u1", **kwargs}
        assert client.track("report.created", tenant_id="t", workspace_id="w", **kwargs) is False
        assert sum(client.stats().dropped.values()) == 1 and client.stats().queued == 0
