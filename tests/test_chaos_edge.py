"""Chaos at the edge (issue #16): the broker, the collector and its spool fail under a steady
load of beacons, with the whole pipeline (collector, worker, sink) running as real processes
on a broker of this module's own (the shared session broker is never stopped).

Faults come from a printed seed (TALLY_CHAOS_SEED repeats a run); every scenario ends with
the exact checks of tests/chaos.py in ClickHouse and prints one `[chaos] {json}` line.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from tally.infra import kafka
from tally.producers.collector.spool import DATA, HEADER, MAGIC
from tally.schemas.codec import default_codec

from tests.chaos import Faults, assert_stored_exactly_once, readyz, report
from tests.conftest import Broker, Env, Proc, isolated_env, start_pipeline, wait_for
from tests.helpers import BROWSER_UA, BeaconLoad, collect_url, post_json
from tests.ports import free_port, free_port_pair
from tests.test_collector import start_collector
from tests.test_collector_fuzz import requests, send_raw
from tests.test_collector_outage import start_patiently

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

RATE = 50  # beacons per second: a steady load the replay outruns


@pytest.fixture(scope="module")
def edge_broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    kafka.ensure_jars()
    data = tmp_path_factory.mktemp("edge-kafka")
    port = free_port_pair()
    b = Broker(f"127.0.0.1:{port}", "kafka", data_dir=data, command=kafka.broker_command(data, port, 512),
               log=data / "broker.log")
    start_patiently(b)
    yield b
    resume(b, restart=False)
    b.stop()


@pytest.fixture
def own(edge_broker: Broker) -> Iterator[Broker]:
    """The module's broker, running (not stopped, not dead) before and after each test."""
    resume(edge_broker)
    yield edge_broker
    resume(edge_broker)


def resume(b: Broker, restart: bool = True) -> None:
    """SIGCONT a stopped broker; start a dead one again."""
    if b.proc is not None and b.proc.poll() is None:
        os.killpg(b.proc.pid, signal.SIGCONT)
    elif restart:
        start_patiently(b)


def broker_proc(b: Broker) -> Proc:
    assert b.proc is not None and b.log is not None
    return Proc("broker", b.proc, b.log)


def bring_back(faults: Faults, b: Broker, sig: signal.Signals) -> None:
    """The broker returns from a fault: SIGCONT after SIGSTOP, a new process after SIGKILL."""
    faults.log.append(f"{time.strftime('%H:%M:%S')} {'SIGCONT' if sig == signal.SIGSTOP else 'restart'} broker")
    resume(b)


def restart_collector(env: Env, spawn) -> Proc:
    from tally.ops.stack import http_ok

    proc = spawn(env, "collector")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{env.settings.collector_port}/healthz") or not proc.alive(), 60,
             "the collector listening")
    assert proc.alive(), proc.output()[-3000:]
    return proc


def pipeline_env(b: Broker, tmp_path: Path) -> Env:
    return isolated_env(b.bootstrap, tmp_path, TALLY_RATE_LIMIT_PER_SECOND="0", TALLY_SPOOL_AFTER_MS="300")


def metric(settings, name: str, **labels: str) -> float:
    """A counter of the collector's /metrics (0 when absent)."""
    url = f"http://{settings.collector_host}:{settings.collector_port}/metrics"
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    m = re.search(rf"^{name}\{{{re.escape(want)}\}} (\S+)$" if labels else rf"^{name} (\S+)$", text, re.M)
    return float(m.group(1)) if m else 0.0


def replayed_online(s, load: BeaconLoad, timeout: float, what: str) -> float:
    """Load still on: wait for the collector to forward directly again, send 200 more, stop."""
    t0 = time.monotonic()
    wait_for(lambda: readyz(s)["mode"] == "online", timeout, what)
    took = time.monotonic() - t0
    load.wait_sent(load.sent + 200)
    load.stop()
    return took


# --- 1. the broker away for 90 s and more ---------------------------------------------------

@pytest.mark.chaos
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "hung"])
def test_broker_away_90s_under_steady_load_loses_and_duplicates_nothing(own, tmp_path, spawn, sig):
    faults = Faults(f"broker {sig.name} for 90-120 s")
    env = pipeline_env(own, tmp_path)
    s = env.settings
    procs = start_pipeline(env, spawn)
    load = BeaconLoad(s, "/away/", threads=16, rate=RATE).start()
    faults.pause(5, 15)
    t0 = time.monotonic()
    faults.signal(broker_proc(own), sig)
    faults.pause(90, 120)
    ready = readyz(s)
    assert ready["mode"] == "spooling" and ready["spool_batches"] > 0, ready
    outage = time.monotonic() - t0
    bring_back(faults, own, sig)
    back = time.monotonic() - t0
    online = replayed_online(s, load, 300, "the collector online again (spool replayed)")
    assert not load.failed, dict(list(load.failed.items())[:5])
    # A broker away longer than the group session: the worker's partitions are taken back
    # before its commit, and it produces that input's pageviews again (docs/reliability.md).
    counts = assert_stored_exactly_once(env, load, "/away/", procs, unmerged_rows=True)
    report(f"broker {sig.name} under load", faults, load_per_s=RATE, outage_s=round(outage, 1),
           broker_back_s=round(back - outage, 1), spooled_batches=ready["spool_batches"],
           online_after_back_s=round(online, 1), **counts)


# --- 2. the collector killed while acks stall, and again during its replay -----------------

@pytest.mark.chaos
def test_collector_sigkilled_while_acks_stall_and_again_during_its_replay(own, tmp_path, spawn):
    faults = Faults("collector SIGKILLed twice")
    env = pipeline_env(own, tmp_path)
    s = env.settings
    sink, worker, collector = start_pipeline(env, spawn)
    load = BeaconLoad(s, "/twice/", threads=16, rate=RATE).start()
    load.wait_sent(300)
    broker = broker_proc(own)
    faults.signal(broker, signal.SIGSTOP)  # acks stall: batches wait in librdkafka and the spool
    wait_for(lambda: readyz(s)["mode"] == "spooling", 60, "the collector spooling")
    faults.pause(5, 20)
    faults.signal(collector, signal.SIGKILL)
    collector = restart_collector(env, spawn)
    assert readyz(s)["spool_batches"] > 0  # the old spool, taken over
    faults.pause(2, 10)
    bring_back(faults, own, signal.SIGSTOP)
    spooled = readyz(s)["spool_batches"]
    # Its replay has begun once the spool shrinks. The broker hangs again then, so the replay
    # is held part-way however fast it runs (its batches stay unacknowledged in the spool),
    # and the collector is killed during it.
    wait_for(lambda: readyz(s)["spool_batches"] < spooled, 60, "the replay under way", interval=0.02)
    faults.signal(broker, signal.SIGSTOP)
    left = readyz(s)["spool_batches"]
    assert left > 0, "the replay ended before the broker hung again: nothing was tested"
    faults.pause(0, 0.5)
    faults.signal(collector, signal.SIGKILL)
    bring_back(faults, own, signal.SIGSTOP)
    collector = restart_collector(env, spawn)
    online = replayed_online(s, load, 300, "the collector online again (spool replayed)")
    # A beacon answered when its collector died may be durable (spooled) all the same.
    counts = assert_stored_exactly_once(env, load, "/twice/", (sink, worker, collector), raw_repeats=True,
                                        in_flight=load.failed)
    report("collector SIGKILLed while acks stall, and during its replay", faults, load_per_s=RATE,
           spooled_batches=spooled, left_at_second_kill=left, online_after_s=round(online, 1), **counts)


# --- 3. the spool's own disk: full, and a flipped byte -------------------------------------

@pytest.fixture
def tiny_spool(tmp_path: Path) -> Iterator[Path]:
    """A 256 KiB tmpfs where the collector's spool lives (state dir of isolated_env)."""
    root = tmp_path / "state" / "spool"
    root.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k,mode=0700", "tmpfs", str(root)], check=True)
    try:
        yield root
    finally:
        # Mounted before the processes started, unmounted after `spawn` stopped them.
        if subprocess.run(["umount", str(root)], check=False).returncode:
            subprocess.run(["umount", "-l", str(root)], check=True)


def probe(s) -> tuple[int, dict[str, str]]:
    status, _, headers = post_json(collect_url(s), {"site": "example.com", "path": "/probe"},
                                   headers={"User-Agent": BROWSER_UA})
    return status, headers


@dataclass
class Running:
    """A pipeline under load whose broker was just SIGKILLed or SIGSTOPped (the seed chose)."""

    faults: Faults
    sig: signal.Signals
    env: Env
    procs: tuple[Proc, Proc, Proc]
    load: BeaconLoad


def broker_away_under_load(name: str, b: Broker, tmp_path: Path, spawn, prefix: str) -> Running:
    faults = Faults(name)
    sig = faults.rnd.choice([signal.SIGKILL, signal.SIGSTOP])
    env = pipeline_env(b, tmp_path)
    procs = start_pipeline(env, spawn)
    load = BeaconLoad(env.settings, prefix, threads=16, rate=RATE).start()
    load.wait_sent(200)
    faults.signal(broker_proc(b), sig)
    return Running(faults, sig, env, procs, load)


@pytest.mark.chaos
def test_spool_disk_full_refuses_with_503_and_stores_every_2xx(tiny_spool, own, tmp_path, spawn):
    run = broker_away_under_load("spool disk full (256 KiB tmpfs)", own, tmp_path, spawn, "/full/")
    faults, sig, env, procs, load = run.faults, run.sig, run.env, run.procs, run.load
    s = env.settings
    wait_for(lambda: any(v.startswith("503") for v in load.failed.values()), 180, "the spool's disk full")
    status, headers = probe(s)
    assert status == 503 and int(headers["Retry-After"]) > 0, (status, headers)
    faults.pause(5, 15)  # load on against a full disk
    bring_back(faults, own, sig)
    online = replayed_online(s, load, 300, "the collector online again (spool replayed)")
    assert set(load.failed.values()) == {"503 b'{\"detail\": \"broker unreachable and spool full; retry later\"}'"}
    refused = metric(s, "tally_collector_beacons_dropped_total", reason="spool_full")
    assert refused == len(load.failed) + (status == 503)  # each refusal counted once
    counts = assert_stored_exactly_once(env, load, "/full/", procs, unmerged_rows=True)  # as above
    report("spool disk full under load", faults, load_per_s=RATE, broker_fault=sig.name,
           refused_503=len(load.failed), online_after_back_s=round(online, 1), **counts)


def data_records(seg: Path) -> list[tuple[int, int]]:
    """(payload offset, length) of every whole DATA record in a spool segment, in order."""
    data, pos, out = seg.read_bytes(), 0, []
    while pos + HEADER.size <= len(data):
        magic, kind, _id, length, _crc = HEADER.unpack_from(data, pos)
        if magic != MAGIC or pos + HEADER.size + length > len(data):
            break
        if kind == DATA:
            out.append((pos + HEADER.size, length))
        pos += HEADER.size + length
    return out


@pytest.mark.chaos
def test_a_byte_flipped_in_the_spool_loses_only_its_batch_counted(own, tmp_path, spawn):
    run = broker_away_under_load("a byte flipped in a spooled batch", own, tmp_path, spawn, "/flip/")
    faults, sig, env, procs, load = run.faults, run.sig, run.env, run.procs, run.load
    s = env.settings
    wait_for(lambda: readyz(s)["mode"] == "spooling", 60, "the collector spooling")
    faults.pause(5, 15)
    # A batch spooled in spooling mode went straight to disk (librdkafka never held it):
    # damaging its record destroys it.
    seg = max((s.state_dir / "spool").rglob("seg-*.log"))
    records = data_records(seg)
    offset, length = records[faults.rnd.randrange(len(records) // 2, len(records))]
    with open(seg, "r+b") as fh:
        fh.seek(offset)
        payload = fh.read(length)
        victims = {b["path"] for b in default_codec().decode("beacon_batch", payload)["items"]}
        at = faults.rnd.randrange(length)
        fh.seek(offset + at)
        fh.write(bytes([payload[at] ^ (1 << faults.rnd.randrange(8))]))
    faults.log.append(f"{time.strftime('%H:%M:%S')} flipped a bit of {seg.name}+{offset + at}")
    faults.pause(1, 5)
    bring_back(faults, own, sig)
    online = replayed_online(s, load, 300, "the collector online again (spool replayed)")
    assert not load.failed, dict(list(load.failed.items())[:5])
    assert metric(s, "tally_collector_spool_corrupt_batches_total", reason="spool_corrupt") == 1
    assert victims <= load.acked  # answered 2xx, then destroyed on disk
    counts = assert_stored_exactly_once(env, load, "/flip/", procs, lost=victims, unmerged_rows=True)  # as above
    report("byte flipped in a spooled batch", faults, load_per_s=RATE, broker_fault=sig.name,
           online_after_back_s=round(online, 1), **counts)


# --- 4. fuzzing a collector whose spool is full ---------------------------------------------

@pytest.mark.chaos
def test_fuzzing_while_the_spool_is_full_yields_no_other_5xx(tiny_spool, own, tmp_path):
    # Topics made on the module's broker, then an address nobody listens on: every batch
    # must go to the spool, which is full.
    env = isolated_env(own.bootstrap, tmp_path, TALLY_SPOOL_AFTER_MS="100", TALLY_RATE_LIMIT_PER_SECOND="0",
                       TALLY_TRUSTED_PROXIES="127.0.0.1,10.0.0.0/8")
    env.vars["TALLY_KAFKA_BOOTSTRAP"] = f"127.0.0.1:{free_port()}"
    s = env.settings
    proc = start_collector(env, tmp_path / "collector.log")
    try:
        big = "/" + "p" * 1900
        for _ in range(2000):
            status, _, _ = post_json(collect_url(s), {"site": "example.com", "path": big},
                                     headers={"User-Agent": BROWSER_UA})
            if status == 503:
                break
        assert status == 503

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(request=requests())
        def no_other_5xx(request: bytes) -> None:
            status = send_raw(s.collector_port, request)
            assert status < 500 or status == 503, request[:300]
            assert proc.alive()

        no_other_5xx()
        assert proc.alive()
        url = f"http://127.0.0.1:{s.collector_port}"
        text = urllib.request.urlopen(f"{url}/metrics", timeout=5).read().decode()
        fives = re.findall(r'tally_collector_requests_total\{([^}]*status="5\d\d"[^}]*)\} (\S+)', text)
        assert fives and all('status="503"' in labels for labels, _ in fives), fives
        answered_503 = sum(float(n) for _, n in fives)
        assert metric(s, "tally_collector_beacons_dropped_total", reason="spool_full") == answered_503
        assert urllib.request.urlopen(f"{url}/healthz", timeout=5).status == 200
    finally:
        proc.stop()
