"""The stream worker's Prometheus endpoint (streams/exporter.py): step timings, drops and bad
rows by reason and the watchdog's view; loopback only by default, a port of its own per
worker, GET /metrics only."""

from __future__ import annotations

import re
import socket
import urllib.error
import urllib.request

import pytest
from tally.schemas.reasons import BadRowReason, DropReason
from tally.streams import exporter
from tally.streams.metrics import WorkerCounts
from tally.streams.watchdog import Watchdog

from tally import health
from tally.config import Settings
from tests.conftest import wait_for
from tests.stream_support import CHROME, FIREFOX, GOOGLEBOT, beacon, produce_batches

TOPIC = "t.beacons.raw"


def _served(tmp_path, **env: str):
    settings = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path), **env})
    counts = WorkerCounts()
    counts.steps.add("beacons", "bot", 0.25, 200)
    counts.records["stage1-beacons"] += 1
    counts.dropped[DropReason.BOT.value] += 7
    counts.bad_rows[BadRowReason.TOO_LATE.value] += 2
    clock = [100.0]
    watchdog = Watchdog(300, {TOPIC: "stage1-beacons"}, clock=lambda: clock[0])
    watchdog.assigned([(TOPIC, 3)])
    clock[0] += 42
    watchdog.check({(TOPIC, 3): 10}, {(TOPIC, 3): 4})
    served = exporter.serve(settings, exporter.WorkerCollector(counts, watchdog, {}))
    assert served is not None
    return served


def _get(url: str, method: str = "GET") -> tuple[int, str]:
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def test_metrics_name_steps_reasons_and_the_watchdogs_view(tmp_path):
    url, server = _served(tmp_path)
    try:
        status, body = _get(url)
        assert status == 200
        assert 'tally_worker_step_seconds_total{stage="beacons",step="bot"} 0.25' in body
        assert 'tally_worker_step_items_total{stage="beacons",step="bot"} 200.0' in body
        assert 'tally_worker_dropped_total{reason="bot"} 7.0' in body
        assert 'tally_worker_bad_rows_total{reason="too_late"} 2.0' in body
        assert f'tally_worker_partition_lag{{partition="3",topic="{TOPIC}"}} 6.0' in body
        assert f'tally_worker_partition_stalled_seconds{{partition="3",topic="{TOPIC}"}} 42.0' in body
        assert "tally_worker_stall_limit_seconds 300.0" in body
        assert "process_cpu_seconds_total" in body  # the process-wide registry is served too
    finally:
        server.shutdown()


def test_loopback_only_a_port_per_worker_and_nothing_but_get_metrics(tmp_path):
    (url_a, a), (_, b) = _served(tmp_path), _served(tmp_path)
    try:
        assert a.server_address[0] == "127.0.0.1" and url_a.startswith("http://127.0.0.1:")
        assert a.server_address[1] != b.server_address[1]  # port 0: workers on one host never collide
        assert _get(url_a.replace("/metrics", "/"))[0] == 404
        assert _get(url_a.replace("/metrics", "/metrics/../etc/passwd"))[0] == 404
        assert _get(url_a, "POST")[0] == 405
        outside = _non_loopback_address()
        if outside is not None:  # from another interface, nobody answers
            with pytest.raises(OSError), socket.create_connection((outside, a.server_address[1]), timeout=3):
                pass
    finally:
        a.shutdown()
        b.shutdown()


def test_off_means_no_listener(tmp_path):
    settings = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path), "TALLY_WORKER_METRICS_PORT": "off"})
    assert exporter.serve(settings, exporter.WorkerCollector(WorkerCounts(), Watchdog(0, {}), {})) is None


def _non_loopback_address() -> str | None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        try:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, the kernel picks the interface
            address = s.getsockname()[0]
        except OSError:
            return None
    return None if address.startswith("127.") else address


@pytest.mark.integration
def test_a_running_worker_reports_its_steps_and_drops(tally_env, spawn):
    s = tally_env.settings
    tally_env.vars["TALLY_WORKER_STALL_SECONDS"] = "20"  # the health report every 5 s
    tally_env.vars["TALLY_DROP_EMPTY_UA"] = "1"  # recorded by default (seed 002); dropped when configured
    spawn(tally_env, "worker")
    produce_batches(s, [[beacon(ua=FIREFOX, ip=f"ip-{i}") for i in range(20)] + [beacon(ua=GOOGLEBOT), beacon(ua="")]
                        + [beacon(ua=CHROME, datacenter=True)]], partition=0)

    def scraped() -> str | None:
        url = next((r.get("metrics") for r in health.read(s, "worker") if r.get("alive")), None)
        if not url:
            return None
        body = _get(url)[1]
        return body if 'tally_worker_dropped_total{reason="datacenter"} 1.0' in body else None

    body = wait_for(scraped, 120, "the worker's /metrics with the batch counted")
    assert 'tally_worker_dropped_total{reason="bot"} 1.0' in body
    assert 'tally_worker_dropped_total{reason="empty_user_agent"} 1.0' in body
    assert 'tally_worker_events_accepted_total{stage="stage1-beacons"} 20.0' in body
    for step in ("too_late", "datacenter", "bot", "referrer_spam", "no_salt", "enrich"):
        assert f'tally_worker_step_seconds_total{{stage="beacons",step="{step}"}}' in body, step
    assert f'tally_worker_partition_lag{{partition="0",topic="{s.topic("beacons.raw")}"}}' in body
    # State size and rebuild time of every held partition (4 here, all held by this one worker).
    assert re.search(r'^tally_worker_state_windows\{kind="web"\} [1-9]', body, re.M), body
    assert re.search(r'^tally_worker_state_session_visitors\{kind="web"\} 20\.0$', body, re.M), body
    rebuilt = re.findall(r'^tally_worker_rebuild_seconds\{kind="web",partition="(\d)"\} ', body, re.M)
    assert sorted(rebuilt) == ["0", "1", "2", "3"], body
    assert f'tally_worker_uncommitted_seconds{{partition="0",topic="{s.topic("beacons.raw")}"}}' in body
