"""Chaos for the stream workers and the sink (issue #16), on the session's broker, with the
whole pipeline as real processes and beacons arriving through the collector all along:

- the composite run: workers SIGKILLed and restarted, one worker frozen (SIGSTOP) for longer
  than its consumer session, the sink SIGKILLed and restarted, all during one long load;
- rescaling under load: 1 -> 2 -> 1 and 1 -> 3 -> 1 workers;
- the warehouse unavailable for over a minute under load (embedded and server mode);
- a worker whose clock runs 72 h ahead.

Every fault comes from a printed seed (TALLY_CHAOS_SEED repeats a run) and every scenario
ends with the exact checks of tests/chaos.py: acknowledged == stored, once, no drift.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from tally.ops.stack import http_ok

from tests.chaos import Faults, assert_stored_exactly_once, report, stored
from tests.conftest import REPO, Env, free_port, start_pipeline, wait_for
from tests.helpers import BeaconLoad, query_rows

pytestmark = [pytest.mark.integration, pytest.mark.timeout(900)]

# The composite run: enough beacons to span every fault, at a rate two cores sustain next to
# the pipeline (the collector, two workers, the sink and the load's own threads).
COMPOSITE_BEACONS = 100_000
COMPOSITE_RATE = 500
WORKER_KILLS = 6
SINK_KILLS = 6
# streams/app.py: broker_session_timeout=6.0; a frozen worker must outlive it in the group.
SESSION_TIMEOUT_S = 6.0


def group_members(s) -> tuple[int, int] | None:
    """(members, members holding partitions) of the worker group, once it is stable (one
    describe call: tally.ops.lag.group_report also lists offsets, three round trips that a
    loaded machine times out more often than not)."""
    from tally.topics import admin

    client = admin(s)  # keep a reference: futures of a collected client never resolve
    try:
        desc = client.describe_consumer_groups([s.app_id], request_timeout=10)[s.app_id].result(10)
    except Exception:
        return None
    if desc.state.name.lower() != "stable":
        return None
    return len(desc.members), sum(1 for m in desc.members if m.assignment and m.assignment.topic_partitions)


def members_with_partitions(s) -> int | None:
    return None if (g := group_members(s)) is None else g[1]


def sink_metric(s, name: str) -> float | None:
    import re
    import urllib.request

    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{s.query_port}/metrics", timeout=5) as resp:
            text = resp.read().decode()
    except OSError:
        return None
    return sum(float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def repeated_event_ids(s, topic: str, schema: str, prefix: str) -> int:
    """How many event ids under prefix occur more than once in a topic (read to its end)."""
    from collections import Counter

    from confluent_kafka import Consumer, TopicPartition
    from tally.schemas.codec import default_codec

    from tally.kafka import consumer_config

    name, codec, seen = s.topic(topic), default_codec(), Counter()
    consumer = Consumer(consumer_config(s, f"test-reader-{time.monotonic_ns()}"))
    try:
        parts = list(consumer.list_topics(name, timeout=10).topics[name].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(name, p), timeout=10)[1] for p in parts}
        consumer.assign([TopicPartition(name, p, 0) for p in parts])
        at = dict.fromkeys(parts, 0)
        while any(at[p] < ends[p] for p in parts):
            for msg in consumer.consume(1000, 1.0):
                if msg.error() is None:
                    at[msg.partition()] = msg.offset() + 1
                    seen.update(str(i["event_id"]) for i in codec.decode(schema, msg.value())["items"]
                                if i["path"].startswith(prefix))
    finally:
        consumer.close()
    return sum(1 for n in seen.values() if n > 1)


@pytest.mark.chaos
def test_composite_workers_and_sink_killed_and_frozen_under_load(tally_env: Env, spawn):
    env = tally_env
    env.vars["TALLY_RATE_LIMIT_PER_SECOND"] = "0"
    s = env.settings
    sink, first, collector = start_pipeline(env, spawn)
    workers = [first, spawn(env, "worker", name="worker-b")]  # it joins while the load starts
    faults = Faults("composite: workers and sink SIGKILLed, a worker SIGSTOPped")
    plan = ["worker"] * WORKER_KILLS + ["sink"] * SINK_KILLS + ["freeze"]
    faults.rnd.shuffle(plan)

    load = BeaconLoad(s, "/composite/", threads=32, total=COMPOSITE_BEACONS, rate=COMPOSITE_RATE).start()
    t0 = time.monotonic()
    # Spread the faults over the load: each waits a random share of the time left.
    spacing = COMPOSITE_BEACONS / COMPOSITE_RATE / (len(plan) + 1)
    frozen_for = 0.0
    for n, fault in enumerate(plan):
        faults.pause(0.5 * spacing, 1.2 * spacing)
        if fault == "worker":
            i = faults.rnd.randrange(len(workers))
            faults.signal(workers[i], signal.SIGKILL)
            faults.pause(0.2, 5.0)
            workers[i] = spawn(env, "worker", name=f"worker-{n}")
        elif fault == "sink":
            faults.signal(sink, signal.SIGKILL)
            faults.pause(0.2, 5.0)
            sink = spawn(env, "sink", name=f"sink-{n}")
        else:
            victim = workers[faults.rnd.randrange(len(workers))]
            faults.signal(victim, signal.SIGSTOP)
            frozen_for = faults.pause(SESSION_TIMEOUT_S + 2, SESSION_TIMEOUT_S + 12)
            faults.signal(victim, signal.SIGCONT)
    load.join()
    duration = time.monotonic() - t0
    print("\n".join(faults.log))
    assert not load.failed, dict(list(load.failed.items())[:5])
    assert load.sent == COMPOSITE_BEACONS
    # The last sink restart must own the warehouse before anything reads it: a query while
    # no sink listens opens the embedded warehouse in this process instead (sinks/query.py),
    # and then the starting sink finds the data directory taken.
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 120, "the last sink serving")
    procs = [collector, sink, *workers]
    # A worker killed after its outputs were delivered and before its commit processes that
    # input again, and stage 1 sends the same pageviews again: second copies until a merge
    # (docs/reliability.md), so unmerged_rows below.
    wait_for(lambda: stored(s, "/composite/")[0] >= COMPOSITE_BEACONS, 240, "every beacon stored")
    final, rows, ids, _ = stored(s, "/composite/")
    print(f"[chaos] composite: rows FINAL {final}, rows {rows}, event ids {ids}; event ids more than once in "
          f"beacons.raw {repeated_event_ids(s, 'beacons.raw', 'beacon_batch', '/composite/')}, in "
          f"pageviews.enriched {repeated_event_ids(s, 'pageviews.enriched', 'pageview_batch', '/composite/')}")
    counts = assert_stored_exactly_once(env, load, "/composite/", procs, unmerged_rows=True)
    report("workers and sink SIGKILLed, a worker SIGSTOPped", faults, load=COMPOSITE_BEACONS,
           load_per_s=COMPOSITE_RATE, duration_s=round(duration), worker_kills=plan.count("worker"),
           sink_kills=plan.count("sink"), frozen_s=round(frozen_for, 1), **counts)


@pytest.mark.chaos
@pytest.mark.parametrize("peak", [2, 3])
def test_rescale_under_load(tally_env: Env, spawn, peak: int):
    env = tally_env
    env.vars["TALLY_RATE_LIMIT_PER_SECOND"] = "0"
    s = env.settings
    procs = list(start_pipeline(env, spawn))
    faults = Faults(f"rescale 1 -> {peak} -> 1 under load")
    prefix = f"/rescale{peak}/"
    load = BeaconLoad(s, prefix, threads=16, rate=300).start()
    t0 = time.monotonic()
    load.wait_sent(2000)
    extra = []
    for i in range(peak - 1):  # scale out, one at a time, while beacons arrive
        extra.append(spawn(env, "worker", name=f"extra-{i}"))
        faults.log.append(f"{time.strftime('%H:%M:%S')} start worker extra-{i}")
        faults.pause(0.0, 3.0)
    # Faust may split 4 partitions over 3 workers 2/2/0 (capacity ceil(4/3)): a member can
    # hold nothing, so the group is waited for by its members (and more than one working).
    wait_for(lambda: (g := group_members(s)) is not None and g[0] == peak and g[1] >= 2, 120,
             f"{peak} workers in the group")
    faults.log.append(f"{time.strftime('%H:%M:%S')} group: (members, holding partitions) {group_members(s)}")
    load.wait_sent(load.sent + int(faults.rnd.uniform(1000, 4000)))
    for p in extra:  # scale in: each leaves gracefully, the group rebalances under load
        faults.signal(p, signal.SIGTERM)
        assert p.popen.returncode == 0, p.output()[-3000:]
        faults.pause(0.0, 3.0)
    wait_for(lambda: members_with_partitions(s) == 1, 120, "one worker holding every partition")
    load.wait_sent(load.sent + 2000)
    load.stop()
    duration = time.monotonic() - t0
    print("\n".join(faults.log))
    assert not load.failed, dict(list(load.failed.items())[:5])
    counts = assert_stored_exactly_once(env, load, prefix, procs)
    report(f"rescale 1 -> {peak} -> 1 workers", faults, load=load.sent, load_per_s=300,
           duration_s=round(duration), **counts)


def start_chdb_server(data: Path, port: int) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "chdb_http.py"), str(data), str(port)],
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 60, "ClickHouse HTTP server")
    return proc


@pytest.mark.chaos
@pytest.mark.parametrize("mode", ["embedded", "server"])
def test_warehouse_unavailable_for_a_minute_under_load(tally_env: Env, spawn, tmp_path: Path, mode: str):
    env = tally_env
    env.vars["TALLY_RATE_LIMIT_PER_SECOND"] = "0"
    outage = tmp_path / "clickhouse-down"
    server: subprocess.Popen | None = None
    if mode == "embedded":
        # The warehouse lives in the sink process: the sink's hook fails every insert as an
        # unreachable server would, while the sink itself stays up (closer to "ClickHouse
        # unavailable" than freezing the whole sink).
        env.vars["TALLY_TEST_SINK_OUTAGE_FILE"] = str(outage)
    else:
        port, data = free_port(), tmp_path / "server-data"
        server = start_chdb_server(data, port)
        env.vars.update({"TALLY_CLICKHOUSE_URL": f"http://127.0.0.1:{port}",
                         "TALLY_ANALYST_CLICKHOUSE_URL": f"http://tally_analyst:analyst@127.0.0.1:{port}"})
    s = env.settings
    try:
        procs = list(start_pipeline(env, spawn))
        faults = Faults(f"warehouse unavailable ({mode})")
        prefix = f"/outage-{mode}/"
        load = BeaconLoad(s, prefix, threads=16, rate=300).start()
        t0 = time.monotonic()
        load.wait_sent(int(faults.rnd.uniform(1000, 3000)))
        if server is not None:
            faults.log.append(f"{time.strftime('%H:%M:%S')} SIGKILL chdb_http server")
            server.send_signal(signal.SIGKILL)
            server.wait(10)
        else:
            faults.log.append(f"{time.strftime('%H:%M:%S')} outage hook on")
            outage.touch()
        down_at = time.monotonic()
        wait_for(lambda: sink_metric(s, "tally_sink_paused") == 1, 60, "the sink to pause")
        time.sleep(max(0.0, down_at + faults.rnd.uniform(60, 75) - time.monotonic()))
        down_for = time.monotonic() - down_at
        if server is not None:
            server = start_chdb_server(tmp_path / "server-data", port)
        else:
            outage.unlink()
        faults.log.append(f"{time.strftime('%H:%M:%S')} warehouse back after {down_for:.1f}s")
        load.wait_sent(load.sent + 2000)  # and on, while the backlog drains
        load.stop()
        duration = time.monotonic() - t0
        print("\n".join(faults.log))
        assert not load.failed, dict(list(load.failed.items())[:5])
        counts = assert_stored_exactly_once(env, load, prefix, procs)
        assert sink_metric(s, "tally_sink_paused") == 0
        report(f"warehouse unavailable ({mode})", faults, load=load.sent, load_per_s=300,
               duration_s=round(duration), down_s=round(down_for, 1), **counts)
    finally:
        if server is not None and server.poll() is None:
            server.kill()
            server.wait(10)



@pytest.mark.chaos
def test_a_worker_whose_clock_runs_72_hours_ahead_loses_nothing(tally_env: Env, spawn):
    """The host clock of one worker is 72 h ahead (tests/clock_ahead: its Python wall clock;
    the broker, the collector and the other worker keep the true time). By its own clock every current beacon would be
    older than the allowed lateness (48 h): a too_late bad row. The worker holds its clock
    back to the broker's instead (streams/stages.Clock), so every beacon is stored once."""
    env = tally_env
    env.vars["TALLY_RATE_LIMIT_PER_SECOND"] = "0"
    s = env.settings
    sink, worker, collector = start_pipeline(env, spawn)
    faults = Faults("a worker 72 h ahead")
    ahead = Env({**env.vars, "PYTHONPATH": str(REPO / "tests" / "clock_ahead"),
                 "CHAOS_CLOCK_AHEAD_SECONDS": str(72 * 3600)})
    prefix = "/ahead/"
    load = BeaconLoad(s, prefix, threads=16, rate=300).start()
    t0 = time.monotonic()
    load.wait_sent(1000)
    skewed = spawn(ahead, "worker", name="worker-ahead")
    faults.log.append(f"{time.strftime('%H:%M:%S')} start worker-ahead (+72 h)")
    wait_for(lambda: members_with_partitions(s) == 2, 120, "both workers holding partitions")
    load.wait_sent(load.sent + int(faults.rnd.uniform(1000, 3000)))
    # Then it holds every partition alone for a while.
    assigned = skewed.output().count("Setting newly assigned partitions")
    faults.signal(worker, signal.SIGTERM)
    wait_for(lambda: skewed.output().count("Setting newly assigned partitions") > assigned, 120,
             "the skewed worker given every partition")
    load.wait_sent(load.sent + int(faults.rnd.uniform(2000, 4000)))
    load.stop()
    duration = time.monotonic() - t0
    print("\n".join(faults.log))
    assert not load.failed, dict(list(load.failed.items())[:5])
    acked = len(load.acked)

    def bad_rows() -> int:
        return query_rows(s, "SELECT count() FROM bad_rows")[0][0]

    # Every acknowledged beacon ends as a row or a bad row: none may be a bad row.
    wait_for(lambda: stored(s, prefix)[0] + bad_rows() >= acked, 240, "every beacon stored or a bad row")
    assert bad_rows() == 0, (f"{stored(s, prefix)[0]} of {acked} stored; bad rows: "
                             f"{query_rows(s, 'SELECT reason, count() FROM bad_rows GROUP BY reason')}")
    counts = assert_stored_exactly_once(env, load, prefix, [collector, sink, skewed])
    assert "ahead of the broker's" in skewed.output(), skewed.output()[-3000:]
    report("a worker 72 h ahead", faults, load=load.sent, load_per_s=300, duration_s=round(duration), **counts)
