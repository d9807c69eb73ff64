"""Beacons that reach Kafka twice are counted once, on the real broker with the real worker,
sink and warehouse.

- The same beacon batches produced to beacons.raw again, as the collector's spool replay
  writes them (the same bytes in new records): once to a worker that was SIGKILLed before
  (it must know the event ids from its changelog) and once to a running worker.
- A collector SIGKILLed between Kafka's acknowledgement of its spool replay and recording
  it in the spool (TALLY_TEST_COLLECTOR_CRASH_BEFORE_REPLAY_ACK): its next start sends the
  same batches again.

Both check that the window totals (sessions included) count each event_id once, that the
worker says how many repeats it left out, and that `tally reconcile` finds no drift.
"""

from __future__ import annotations

import re
import signal
import urllib.request
from collections import Counter
from datetime import UTC, datetime, timedelta

import pytest

from tests.conftest import Env, free_port, wait_for
from tests.helpers import BeaconLoad, query_rows, read_beacons
from tests.stream_support import (
    assert_converges,
    expected_aggregates,
    latest_aggregates,
    produce_batches,
    traffic,
)
from tests.test_collector_outage import spooled_event_ids

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def repeats_left_out(worker) -> int:
    """Events the worker reported as applied before (its log line per batch)."""
    return sum(int(n) for n in re.findall(r"(\d+) of \d+ events at \S+ were applied before", worker.output()))


def start_sink_and_worker(env: Env, spawn):
    from tally.ops.stack import http_ok, worker_ready

    s = env.settings
    sink, worker = spawn(env, "sink"), spawn(env, "worker")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    wait_for(lambda: worker_ready(s), 120, "worker in its consumer group")
    return sink, worker


def assert_reconciled(env: Env, procs) -> None:
    from tally.sinks.reconcile import reconcile

    s = env.settings
    today = datetime.now(UTC).date()

    def drift() -> list:
        return [d for d in reconcile(s, today - timedelta(days=1), today + timedelta(days=1)) if d.drift]

    try:
        wait_for(lambda: not drift(), 180, "aggregates and sessions equal to the raw rows")
    except AssertionError:
        raise AssertionError(f"drift {drift()}\n{procs[-1].output()[-4000:]}") from None


def stored(env: Env) -> tuple[int, int]:
    """(rows FINAL, distinct event_ids) of pageviews."""
    final = query_rows(env.settings, "SELECT count() FROM pageviews FINAL")[0][0]
    return final, query_rows(env.settings, "SELECT uniqExact(event_id) FROM pageviews")[0][0]


def test_batches_fed_twice_count_once_across_a_kill_9(tally_env, spawn):
    s = tally_env.settings
    batches = traffic(3000, seed=41)  # 30 batches of 100, 2,000 visitors, default 30-minute sessions
    expected = expected_aggregates(b for batch in batches for b in batch)
    sink, first = start_sink_and_worker(tally_env, spawn)
    produce_batches(s, batches)
    assert_converges(s, expected, first)
    first.stop(signal.SIGKILL)

    # Ten batches again while no worker runs: the next one knows their ids from the changelog.
    produce_batches(s, batches[:10])
    second = spawn(tally_env, "worker", name="after-kill")
    assert_converges(s, expected, second)
    wait_for(lambda: repeats_left_out(second) == 1000, 60, "the worker's count of repeats")
    # Five more while it runs.
    produce_batches(s, batches[10:15])
    assert_converges(s, expected, second)
    wait_for(lambda: repeats_left_out(second) == 1500, 60, "the worker's count of repeats")

    got = latest_aggregates(s)
    assert sum(v[0] for k, v in got.items() if k[0] == "site_day") == 3000
    # The worker's /metrics count them, and hold each of the 3,000 ids once.
    url = re.search(r"metrics on (http://\S+/metrics)", second.output()).group(1)
    with urllib.request.urlopen(url, timeout=10) as resp:
        body = resp.read().decode()
    assert 'tally_worker_repeated_events_total{kind="web"} 1500.0' in body
    assert 'tally_worker_remembered_event_ids{kind="web"} 3000.0' in body
    wait_for(lambda: stored(tally_env) == (3000, 3000), 120, "3,000 distinct pageviews stored")
    assert_reconciled(tally_env, (sink, second))
    assert sink.alive() and second.alive()


def test_a_collector_killed_between_kafkas_ack_and_the_spools_counts_each_beacon_once(tally_env, spawn):
    from tally.ops.stack import http_ok

    tally_env.vars["TALLY_RATE_LIMIT_PER_SECOND"] = "0"  # one client sends them all
    s = tally_env.settings
    sink, worker = start_sink_and_worker(tally_env, spawn)

    def collector(name: str, **extra: str):
        env = Env({**tally_env.vars, **extra})
        proc = spawn(env, "collector", name=name)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{s.collector_port}/healthz") or not proc.alive(), 30, name)
        return proc

    # 1. No broker to be had: every beacon is spooled and answered 2xx.
    away = collector("spooling", TALLY_KAFKA_BOOTSTRAP=f"127.0.0.1:{free_port()}", TALLY_SPOOL_AFTER_MS="100")
    load = BeaconLoad(s, "/replayed/", threads=8, total=400).start()
    load.join()
    assert not load.failed and len(load.acked) == 400, dict(list(load.failed.items())[:3])
    away.stop()
    assert len(spooled_event_ids(s.state_dir / "spool")) == 400
    # 2. The broker is back: Kafka acknowledges the replay, and the collector dies before it
    #    records that in its spool.
    crashing = collector("crashing", TALLY_TEST_COLLECTOR_CRASH_BEFORE_REPLAY_ACK="1")
    wait_for(lambda: not crashing.alive(), 60, "the collector's SIGKILL after the replay's ack")
    assert crashing.popen.returncode == -signal.SIGKILL, crashing.output()[-3000:]
    # 3. Its next start replays the same batches again.
    again = collector("replaying")
    wait_for(lambda: "spool drained" in again.output(), 60, "the spool replayed")

    raw = [b for b in read_beacons(s, 400) if b["path"].startswith("/replayed/")]
    twice = sum(n - 1 for n in Counter(str(b["event_id"]) for b in raw).values())
    assert len({b["path"] for b in raw}) == 400 and twice > 0, "precondition: beacons.raw holds repeats"

    wait_for(lambda: stored(tally_env) == (400, 400), 120, "400 distinct pageviews stored")
    assert_reconciled(tally_env, (sink, worker))
    day = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    site_day = ("site_day", "example.com", "", int(day.timestamp() * 1000))
    assert latest_aggregates(s).get(site_day) == (400, 1), "site_day: 400 pageviews, 1 visitor"
    wait_for(lambda: repeats_left_out(worker) == twice, 60, f"the worker leaving out {twice} repeats")
    visits = query_rows(s, "SELECT sum(visits) FROM session_stats_daily")[0][0]
    assert visits == 1  # one browser, one visit: the repeats made none
    assert sink.alive() and worker.alive() and again.alive()
