"""The compiled writer is byte-identical to fastavro on every schema in the repo."""

from __future__ import annotations

import io
import uuid
from datetime import UTC, date, datetime

import fastavro
import pytest
from fastavro.utils import generate_many
from tally.schemas.avro_writer import compile_writer
from tally.schemas.codec import MAGIC, default_codec

CODEC = default_codec()


def _fastavro(schema, record) -> bytes:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, schema, record)
    return buf.getvalue()


@pytest.mark.parametrize("name", sorted(CODEC.versions))
def test_same_bytes_as_fastavro_on_generated_records(name):
    v = CODEC.latest(name)
    write = compile_writer(v.parsed)
    for record in generate_many(v.raw, 200):
        out: list[bytes] = []
        write(record, out)
        assert b"".join(out) == _fastavro(v.writer, record)


def test_logical_types_and_defaults_match():
    v = CODEC.latest("product_event")
    rec = {"event_id": uuid.uuid4(), "event": "report.created", "feature_area": "report",
           "tenant_id": "t", "workspace_id": "w", "occurred_at": datetime(2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC),
           "metadata": {"a": None, "b": True, "c": -5, "d": "x" * 300, "é": 2**40}}
    data = CODEC.encode("product_event", rec)
    assert data == MAGIC + v.fingerprint + _fastavro(v.writer, rec)
    back = CODEC.decode("product_event", data)
    assert back["event_id"] == rec["event_id"] and back["occurred_at"] == rec["occurred_at"].replace(microsecond=678000)
    assert back["actor_type"] == "user" and back["metadata"] == rec["metadata"]
    day = CODEC.encode("drop_count", {"site": "s", "day": date(2026, 1, 2), "reason": "bot", "count": 3,
                                      "component": "worker"})
    assert CODEC.decode("drop_count", day)["day"] == date(2026, 1, 2)


def test_unusual_values_fall_back_to_fastavro_errors():
    with pytest.raises((ValueError, TypeError)):
        CODEC.encode("product_event", {"event_id": "x", "event": 3})
    # naive datetime: fastavro's own semantics (local time), via the fallback
    naive = datetime(2026, 1, 2)
    rec = {"kind": "k", "scope": "s", "window_start": naive, "window_end": naive, "partition": 0,
           "count": 1, "uniques": 1, "version": 1}
    v = CODEC.latest("window_aggregate")
    assert CODEC.encode("window_aggregate", rec) == MAGIC + v.fingerprint + _fastavro(v.writer, rec)


def test_cached_pairs_keep_bool_and_int_apart():
    v = CODEC.latest("product_event")
    base = {"event_id": str(uuid.uuid4()), "event": "e.x", "feature_area": "e", "tenant_id": "t",
            "workspace_id": "w", "occurred_at": 5}
    for meta in ({"a": 1}, {"a": True}, {"a": 1}, {"a": "1"}, {"a": None}, {"a": False}, {"a": 0}):
        rec = {**base, "metadata": meta}
        assert CODEC.encode("product_event", rec) == MAGIC + v.fingerprint + _fastavro(v.writer, rec)
        assert CODEC.decode("product_event", CODEC.encode("product_event", rec))["metadata"] == meta
        assert type(CODEC.decode("product_event", CODEC.encode("product_event", rec))["metadata"]["a"]) is type(meta["a"])


# --- the SDK's cached pieces (tally.producers.sdk.pieces) ---------------------------------
# An event of known pieces is validated and encoded from caches. It must give the
# catalog's verdict on every input and fastavro's bytes on every accepted one.

def _sdk_client():
    from tally.producers.sdk import Client

    from tally.config import Settings

    # Nothing is sent: produce() is replaced by a capture below; the port is closed.
    settings = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": "127.0.0.1:9", "TALLY_SDK_EXIT_FLUSH_SECONDS": "0"})
    return Client(settings, app="test-app", strict=False, producer_overrides={"log_level": 0})


def _random_call(rnd):
    """A track() call drawn from small pools of valid and invalid pieces, so pieces repeat."""
    from tally.producers.sdk import Actor, Subject
    from tally.schemas.catalog import CATALOG

    event = rnd.choice([*CATALOG, "nope.unknown"])
    spec = CATALOG.get(event)
    ids = ["t1", "tenant-2", "ws_9", "u_1", "", "jane@example.com", "a b", None, 5, "sk_live_abcdefghijklmnop"]
    tenant, workspace = rnd.choice(ids[:3] * 4 + ids), rnd.choice(ids[:3] * 4 + ids)
    actor = rnd.choice(["u_1", "u_2", None, Actor("service", "importer"), ("user", "u_3"), ("system", ""),
                        ("robot", "x"), "", "x@y.io", 42, ("user", "u", "extra")])
    stype = spec.subject_type if spec else "ticket"
    subject = rnd.choice([None, (stype, "s_1"), Subject(stype, "s_2"), (stype, None), ("other", "s_1"),
                          ("", "s_3"), (stype, "no spaces please"), [stype, "s_1"], "ab"])
    metadata: dict = {}
    for key, prop in (spec.props.items() if spec else []):
        if rnd.random() < 0.3:
            continue  # leaves required keys out now and then
        good = {"enum": list(prop.values), "bool": [True, False], "int": [0, 3, prop.max],
                "timestamp": [1_763_780_000_000], "id": ["p_1", "x-2"], "type": ["policy_sync", "a.b"],
                "route": ["/t/{id}", "/*"], "money": [0, 1250, prop.max],
                "enum_list": ["", ",".join(prop.values[:1]), ",".join(prop.values[:2]), list(prop.values[:2])]}[prop.kind]
        bad = [None, 1, True, 1.0, -1, prop.max + 1, "jane@example.com", "x" * 70, "", [1], "https://a.b/?q=1"]
        metadata[key] = rnd.choice(good * 12 + bad)
    if rnd.random() < 0.1:
        metadata["unknown_key"] = "x"
    return event, tenant, workspace, actor, subject, rnd.choice([metadata] * 8 + [None, {}, [("a", 1)]])


@pytest.mark.parametrize("tiny_caches,in_request", [(False, False), (True, False), (False, True)])
def test_fast_path_gives_the_catalogs_verdict_and_fastavros_bytes(tiny_caches, in_request, monkeypatch):
    """in_request: calls inside request contexts, so events carry a request_id (some callers
    pass their own)."""
    import contextlib
    import random

    from tally.producers.sdk import pieces
    from tally.producers.sdk.context import request_context

    if tiny_caches:  # caches emptied all the time, pre-seeded entries included
        for name in ("_CACHE_MAX", "_SUBJECTS_MAX", "_VALUES_MAX"):
            monkeypatch.setattr(pieces, name, 2)
    client, reference = _sdk_client(), _sdk_client()
    sent: list[bytes] = []
    full: list[bytes | None] = []

    def take_full(*args):
        full.append(client._full_value(*args))
        return full[-1] is not None

    track = client._fast.compile_track(lambda topic, value, key: sent.append(value), client.topic,
                                       lambda: None, when_full=None, failed=None, full=take_full)
    v = CODEC.latest("product_event")
    rnd = random.Random(7)
    fast_hits = accepted = 0
    ids = set()
    for i in range(4000):
        event, tenant, workspace, actor, subject, metadata = _random_call(rnd)
        if in_request and isinstance(metadata, dict) and i % 7 == 0:
            metadata["request_id"] = rnd.choice(["own-1", "bad id", 5])
        ctx = request_context(f"req-{i // 50}") if in_request else contextlib.nullcontext()
        with ctx:
            # The reference: another client's full path (record, check(), codec), no caches involved.
            expected = reference._full_value(event, tenant, workspace, actor, subject, metadata, None)
            n_sent, n_full = len(sent), len(full)
            ok = track(event, tenant_id=tenant, workspace_id=workspace, actor=actor, subject=subject,
                       metadata=metadata)
        assert ok is (expected is not None), (event, tenant, workspace, actor, subject, metadata)
        accepted += ok
        if len(sent) > n_sent:  # the fast path took it
            fast_hits += 1
            data = sent[-1]
            rec = CODEC.decode("product_event", data)
            assert data == MAGIC + v.fingerprint + _fastavro(v.writer, rec)
            ref = CODEC.decode("product_event", expected)
            for k in ("event_id", "occurred_at"):
                rec.pop(k), ref.pop(k)
            assert rec == ref and [type(x) for x in rec["metadata"].values()] == \
                [type(x) for x in ref["metadata"].values()]
            u = CODEC.decode("product_event", data)["event_id"]
            assert u.version == 7 and u.variant == uuid.RFC_4122 and u not in ids
            ids.add(u)
        else:
            assert len(full) == n_full + 1 and (full[-1] is None) is (expected is None)
    # the pools repeat, so most accepted calls are served from the caches
    assert accepted > 100 and fast_hits > accepted / 2, (accepted, fast_hits)
    client.close(0)
    reference.close(0)


def test_fast_path_counts_and_closes():
    client = _sdk_client()
    for _ in range(3):
        assert client.track("ticket.created", tenant_id="t", workspace_id="w", actor="u_1",
                            subject=("ticket", "k_1"), metadata={"ticket_type": "incident"})
    assert client.stats().queued == 3
    client.close(0)
    assert not client.track("ticket.created", tenant_id="t", workspace_id="w", actor="u_1",
                            subject=("ticket", "k_1"), metadata={"ticket_type": "incident"})
    assert client.stats().dropped.get("closed") == 1


def test_fast_path_off_for_a_registry_or_another_layout(tmp_path):
    import json
    import shutil

    from tally.producers.sdk.pieces import EventPieces, Unavailable
    from tally.schemas.codec import SCHEMA_DIR, Codec

    with pytest.raises(Unavailable):
        EventPieces(Codec(registry_url="http://127.0.0.1:9"), "app")
    shutil.copytree(SCHEMA_DIR, tmp_path / "avro")
    raw = json.loads((SCHEMA_DIR / "product_event.v1.avsc").read_text())
    raw["fields"].insert(3, {"name": "region", "type": "string", "default": "", "doc": "x"})
    (tmp_path / "avro" / "product_event.v2.avsc").write_text(json.dumps(raw))
    with pytest.raises(Unavailable, match="layout"):
        EventPieces(Codec(tmp_path / "avro"), "app")


def test_uuid7_tails_are_not_shared_with_a_forked_child():
    import os

    from tally import ids

    ids.uuid7_tail()  # the pool is filled
    parents_next = ids.tail_pool[-1]
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child
        os.write(write, ids.uuid7_tail())
        os._exit(0)
    os.close(write)
    os.waitpid(pid, 0)
    childs = os.read(read, 64)
    os.close(read)
    assert len(childs) == 21 and childs != parents_next
    u = uuid.UUID(ids.uuid7(1_763_780_000_000))
    assert u.version == 7 and u.variant == uuid.RFC_4122


@pytest.mark.parametrize("flavour", ["sync", "async"])
def test_fast_path_full_queue_drops_and_counts(flavour):
    """No broker, a queue of 5: the sixth event on (all served by the fast path) is
    dropped as queue_full in both flavours, within TALLY_SDK_MAX_BLOCK_MS."""
    import asyncio

    from tally.producers.sdk import AsyncClient, Client

    from tally.config import Settings

    settings = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": "127.0.0.1:9", "TALLY_SDK_QUEUE_EVENTS": "5",
                                  "TALLY_SDK_MAX_BLOCK_MS": "20", "TALLY_SDK_EXIT_FLUSH_SECONDS": "0"})
    kw = {"tenant_id": "t", "workspace_id": "w", "actor": "u_1", "subject": ("ticket", "k_1"),
          "metadata": {"ticket_type": "incident", "assigned": True}}
    if flavour == "sync":
        client = Client(settings, producer_overrides={"log_level": 0})
        results = [client.track("ticket.created", **kw) for _ in range(10)]
        stats = client.stats()
        client.close(0)
    else:
        async def main():
            client = AsyncClient(settings, producer_overrides={"log_level": 0})
            results = [await client.track("ticket.created", **kw) for _ in range(10)]
            stats = client.stats()
            await client.aclose(0)
            return results, stats

        results, stats = asyncio.run(main())
    assert results == [True] * 5 + [False] * 5
    assert stats.queued == 5 and stats.dropped == {"queue_full": 5}
