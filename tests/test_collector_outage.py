"""Accepted means durable: with the broker down, beacons are spooled to disk and still
answered 2xx; when the broker returns they are replayed, each with its original event_id.

This test runs its own broker (the shared session broker is never stopped).
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from tally.infra import kafka
from tally.producers.collector.spool import DATA, HEADER
from tally.schemas.codec import default_codec

from tests.conftest import Broker, free_port_pair, wait_for
from tests.helpers import post_json, read_beacons
from tests.test_collector import FIREFOX, make_env, start_collector

pytestmark = pytest.mark.integration

N = 1000


def spooled_event_ids(spool_root: Path) -> set[str]:
    """event_ids of every DATA record in the spool files, read straight from disk."""
    codec, ids = default_codec(), set()
    for seg in sorted(spool_root.rglob("seg-*.log")):
        data, pos = seg.read_bytes(), 0
        while pos + HEADER.size <= len(data):
            _magic, kind, _id, length, _crc = HEADER.unpack_from(data, pos)
            payload = data[pos + HEADER.size:pos + HEADER.size + length]
            if kind == DATA:
                ids.update(str(b["event_id"]) for b in codec.decode("beacon_batch", payload)["items"])
            pos += HEADER.size + length
    return ids


def start_patiently(broker: Broker) -> None:
    """Broker.start() waits 90 s; on a loaded machine a JVM restart can take longer."""
    try:
        broker.start()
    except AssertionError:
        from tally.ops.stack import broker_ready

        from tally.config import Settings

        s = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": broker.bootstrap})
        wait_for(lambda: broker_ready(s), 120, f"broker on {broker.bootstrap} (slow start)")


def readyz(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as resp:
        return json.loads(resp.read())


def test_broker_outage_spools_1000_beacons_and_replays_them_all(tmp_path):
    kafka.ensure_jars()
    port = free_port_pair()
    data = tmp_path / "kafka"
    data.mkdir()
    own = Broker(f"127.0.0.1:{port}", "kafka", data_dir=data,
                 command=kafka.broker_command(data, port, 384), log=data / "broker.log")
    start_patiently(own)
    env = make_env(own, tmp_path, TALLY_SPOOL_AFTER_MS="300", TALLY_RATE_LIMIT_PER_SECOND="0")
    s = env.settings
    proc = start_collector(env, tmp_path / "collector.log")
    base = f"http://127.0.0.1:{s.collector_port}"
    try:
        assert post_json(f"{base}/api/v1/collect", {"site": "example.com", "path": "/before"},
                         headers={"User-Agent": FIREFOX})[0] == 204
        assert len(read_beacons(s, 1, timeout=20)) == 1

        own.stop()

        def send(i: int) -> int:
            return post_json(f"{base}/api/v1/collect", {"site": "example.com", "path": f"/outage/{i}"},
                             headers={"User-Agent": FIREFOX}, timeout=30)[0]

        with ThreadPoolExecutor(16) as pool:
            statuses = list(pool.map(send, range(N)))
        assert statuses == [204] * N
        ready = readyz(f"{base}/readyz")
        assert ready["mode"] == "spooling" and ready["ready"] and ready["spool_batches"] > 0
        spooled = spooled_event_ids(s.state_dir / "spool")
        assert len(spooled) == N  # every accepted beacon is on disk, fsync'd, before its 204
        for f in (s.state_dir / "spool").rglob("*"):
            if f.is_file():
                assert b"127.0.0.1" not in f.read_bytes()  # no raw address on disk

        start_patiently(own)
        got = read_beacons(s, N + 1, timeout=90)
        outage = [b for b in got if b["path"].startswith("/outage/")]
        ids = {str(b["event_id"]) for b in outage}
        assert ids == spooled  # the same event_ids, all of them
        assert len(outage) == N  # and no duplicates
        assert {b["path"] for b in outage} == {f"/outage/{i}" for i in range(N)}
        wait_for(lambda: readyz(f"{base}/readyz")["mode"] == "online", 30, "collector back online")
        assert readyz(f"{base}/readyz")["spool_batches"] == 0
        # Online again: a new beacon goes straight to Kafka.
        assert post_json(f"{base}/api/v1/collect", {"site": "example.com", "path": "/after"},
                         headers={"User-Agent": FIREFOX})[0] == 204
        assert any(b["path"] == "/after" for b in read_beacons(s, N + 2, timeout=20))
        assert proc.alive()
    finally:
        proc.stop()
        own.stop()


def test_spool_full_answers_503_with_retry_after(tmp_path, broker):
    # A broker address nobody listens on: every batch must go to a 1 MiB spool.
    port = free_port_pair()
    dead = Broker(f"127.0.0.1:{port}", "external")
    env = make_env(broker, tmp_path, TALLY_SPOOL_AFTER_MS="100", TALLY_SPOOL_MAX_MB="1",
                   TALLY_RATE_LIMIT_PER_SECOND="0")
    env.vars["TALLY_KAFKA_BOOTSTRAP"] = dead.bootstrap
    s = env.settings
    proc = start_collector(env, tmp_path / "collector.log")
    base = f"http://127.0.0.1:{s.collector_port}"
    try:
        path = "/" + "p" * 1900
        statuses, retry_after = [], None
        for _ in range(2000):
            status, _, headers = post_json(f"{base}/api/v1/collect", {"site": "example.com", "path": path},
                                           headers={"User-Agent": FIREFOX})
            statuses.append(status)
            if status == 503:
                retry_after = headers.get("Retry-After")
                break
        assert statuses[0] == 204 and statuses[-1] == 503, statuses[-3:]
        assert retry_after and int(retry_after) > 0
        try:
            urllib.request.urlopen(f"{base}/readyz", timeout=5)
            raise AssertionError("readyz should fail with the broker away and the spool full")
        except urllib.error.HTTPError as exc:
            assert exc.code == 503 and json.loads(exc.read())["spool_has_room"] is False
        metrics = urllib.request.urlopen(f"{base}/metrics", timeout=5).read().decode()
        assert 'tally_collector_beacons_dropped_total{reason="spool_full"} 1.0' in metrics
        # Everything answered 204 is on disk.
        assert len(spooled_event_ids(s.state_dir / "spool")) == statuses.count(204)
    finally:
        proc.stop()


def test_fatal_producer_error_replaces_the_producer_in_place(tmp_path, broker):
    """A fatal Kafka client error (e.g. the idempotent producer's sequence broke) used to
    leave the process unready until restarted; now the producer is replaced in place.
    Beacons submitted around the error are all durable and all reach Kafka, in order
    of acceptance within the replay."""
    import asyncio
    import threading

    from confluent_kafka import KafkaError
    from tally.producers.collector.forwarder import Forwarder

    env = make_env(broker, tmp_path)

    async def scenario() -> tuple[list[bool], list[str], dict, int]:
        fwd = Forwarder(env.settings)
        await fwd.start()
        try:
            enc = fwd.encoder
            first = [enc.item(1_763_780_000_000 + i, "example.com", f"/a{i}", None, "pageview", {},
                              FIREFOX, "ab" * 16, False) for i in range(20)]
            ok = list(await asyncio.gather(*(fwd.submit(x) for x in first)))
            old = fwd.link.producer
            # What librdkafka does on a fatal error: error_cb on the thread serving poll().
            t = threading.Thread(target=fwd.link.on_client_error,
                                 args=(KafkaError(KafkaError._FATAL, "test: fatal", fatal=True),))
            t.start()
            t.join()
            await asyncio.sleep(0.1)
            assert fwd.link.producer is not old and fwd.link.replaced == 1
            second = [enc.item(1_763_780_001_000 + i, "example.com", f"/b{i}", None, "pageview", {},
                               FIREFOX, "ab" * 16, False) for i in range(20)]
            ok += await asyncio.gather(*(fwd.submit(x) for x in second))
            for _ in range(300):  # the replay drains the spool through the new producer
                if fwd.mode == "online":
                    break
                await asyncio.sleep(0.05)
            ready, detail = fwd.ready()
            assert ready, detail
            return ok, [x[1:37].decode() for x in first + second], detail, fwd.link.replaced
        finally:
            await fwd.close()

    ok, ids, detail, replaced = asyncio.run(scenario())
    assert ok == [True] * 40 and replaced == 1
    assert detail["mode"] == "online" and detail["kafka_fatal_error"] is None
    got = {str(b["event_id"]) for b in read_beacons(env.settings, want=40)}
    assert set(ids) <= got
