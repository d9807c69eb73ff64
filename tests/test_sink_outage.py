"""ClickHouse refuses inserts for a while (the sink's outage hook makes every insert
fail as an unreachable server would): the sink retries with backoff, pauses
consumption, keeps serving queries, and after recovery every event sent during the
outage is stored exactly once."""

from __future__ import annotations

import re
import time
import urllib.request

import pytest
from tally.ops.stack import http_ok

from tests.conftest import Env, wait_for
from tests.helpers import query_rows
from tests.sink_records import Records, recent_days

pytestmark = pytest.mark.integration


def metric(port: int, name: str) -> float:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        text = resp.read().decode()
    values = [float(m.group(1)) for m in re.finditer(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M)]
    return sum(values)


def test_outage_then_recovery_loses_nothing(tally_env, spawn, tmp_path):
    s = tally_env.settings
    outage = tmp_path / "clickhouse-down"
    outage.touch()
    sink = spawn(Env({**tally_env.vars, "TALLY_TEST_SINK_OUTAGE_FILE": str(outage),
                      "TALLY_SINK_BATCH_ROWS": "200", "TALLY_SINK_MAX_INSERT_ROWS": "300"}), "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")

    rec = Records(s, partitions=4)
    days = recent_days(2)
    rec.pageviews(500, days)
    rec.drop("a.test", days[0], "bot", 4)
    rec.flush()
    wait_for(lambda: metric(s.query_port, "tally_sink_paused") == 1, 60, "the sink to pause")
    rec.pageviews(500, days)  # more traffic while the warehouse is down
    rec.drop("b.test", days[1], "datacenter", 3)
    rec.flush()
    wait_for(lambda: metric(s.query_port, "tally_sink_insert_failures_total") >= 3, 60, "retries")
    assert query_rows(s, "SELECT count() FROM pageviews")[0][0] == 0  # queries still served
    # Paused: 1000 rows wait in Kafka, the sink holds one batch: 200 rows, grown with the
    # backlog up to the largest insert (300 rows), plus at most one record.
    assert 200 <= metric(s.query_port, "tally_sink_pending_rows_max") <= 300 + 25
    assert sink.alive()

    outage.unlink()
    expected = len(rec.sent.event_ids)
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] >= expected
             and int(query_rows(s, "SELECT sum(count) FROM drops")[0][0] or 0) >= 7, 90, "recovery")
    time.sleep(1.5)
    assert query_rows(s, "SELECT count(), uniqExact(event_id) FROM pageviews")[0] == [expected, expected]
    assert int(query_rows(s, "SELECT sum(count) FROM drops")[0][0]) == 7
    assert metric(s.query_port, "tally_sink_paused") == 0
    out = sink.output()
    assert "retrying in" in out and "consumption resumed" in out, out[-3000:]


def test_server_url_down_is_retried_not_fatal(tally_env, spawn):
    """Pointed at a ClickHouse server that does not answer, the sink waits with backoff
    (it neither crashes nor consumes anything) and stops cleanly when asked."""
    from tests.conftest import free_port

    env = Env({**tally_env.vars, "TALLY_CLICKHOUSE_URL": f"http://127.0.0.1:{free_port()}"})
    sink = spawn(env, "sink")
    wait_for(lambda: sink.output().count("ClickHouse unavailable") >= 2, 60, "two retries")
    assert sink.alive()
    sink.stop()
    assert sink.popen.returncode == 0, sink.output()[-2000:]


def test_server_mode_real_outage(tally_env, spawn, tmp_path):
    """The sink in server mode (TALLY_CLICKHOUSE_URL) against a ClickHouse HTTP server
    (tests/chdb_http.py: the real engine behind the HTTP interface). The server is
    killed with SIGKILL while events keep coming, then started again: every event is
    stored exactly once."""
    import signal
    import subprocess
    import sys

    from tests.conftest import REPO, free_port

    port = free_port()
    data = tmp_path / "server-data"

    def start_server() -> subprocess.Popen:
        proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "chdb_http.py"), str(data), str(port)],
                                start_new_session=True)
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 60, "ClickHouse HTTP server")
        return proc

    server = start_server()
    try:
        env = Env({**tally_env.vars, "TALLY_CLICKHOUSE_URL": f"http://127.0.0.1:{port}",
                   "TALLY_ANALYST_CLICKHOUSE_URL": f"http://tally_analyst:analyst@127.0.0.1:{port}"})
        s = env.settings
        sink = spawn(env, "sink")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
        rec = Records(s, partitions=4)
        days = recent_days(2)
        rec.pageviews(300, days)
        rec.flush()
        wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] == 300, 60, "first rows")

        server.send_signal(signal.SIGKILL)  # the warehouse goes away
        server.wait(10)
        rec.pageviews(400, days)
        rec.drop("a.test", days[0], "bot", 6)
        rec.flush()
        wait_for(lambda: metric(s.query_port, "tally_sink_paused") == 1, 60, "the sink to pause")
        assert sink.alive()

        server = start_server()
        expected = len(rec.sent.event_ids)
        wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] >= expected, 90, "recovery")
        time.sleep(1.5)
        assert query_rows(s, "SELECT count(), uniqExact(event_id) FROM pageviews")[0] == [expected, expected]
        assert int(query_rows(s, "SELECT sum(count) FROM drops")[0][0]) == 6
        assert metric(s.query_port, "tally_sink_paused") == 0
        # Analysts' SQL against the server passes the guard too (and the analyst user is read-only).
        out = subprocess.run([sys.executable, "-m", "tally.ops", "query", "DROP TABLE pageviews"], cwd=REPO,
                             env=env.child_env(), capture_output=True, text=True, timeout=60)
        assert out.returncode == 1 and "refused" in out.stderr.lower(), out.stderr
        assert query_rows(s, "SELECT count() FROM pageviews")[0][0] == expected
    finally:
        if server.poll() is None:
            server.kill()
            server.wait(10)


def test_embedded_warehouse_held_by_another_process_is_waited_for(tally_env, spawn):
    """chDB allows one process per data directory. A `tally query` that found no sink
    listening opens the warehouse itself; a sink starting meanwhile waits for it (it used to
    exit with chDB's 'Error initializing EmbeddedServer')."""
    import subprocess
    import sys

    s = tally_env.settings
    s.clickhouse_dir.mkdir(parents=True, exist_ok=True)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, clickhouse_connect; c = clickhouse_connect.get_client(dsn=sys.argv[1]);"
         " c.query('SELECT 1'); print('open', flush=True); sys.stdin.read()", f"chdb:///{s.clickhouse_dir}"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert holder.stdout.readline().strip() == "open"
        sink = spawn(tally_env, "sink")
        wait_for(lambda: sink.output().count("is open in another process") >= 2, 90, "the sink waiting")
        assert sink.alive(), sink.output()[-3000:]
    finally:
        holder.stdin.close()  # the holder exits and lets go of the directory
        holder.wait(30)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 90, "the sink serving")
    assert query_rows(s, "SELECT count() FROM pageviews")[0][0] == 0
    assert sink.alive(), sink.output()[-3000:]


def test_a_partition_paused_then_lost_is_read_again_when_assigned_back(broker):
    """Found by tests/test_chaos_edge.py (broker SIGKILLed for 90 s): librdkafka keeps a
    pause across a revoke and a new assignment, so partitions the sink paused before its
    group session expired came back paused and the sink never read again."""
    import threading
    import uuid

    from confluent_kafka import Consumer, Producer, TopicPartition
    from tally.sinks.flow import Flow

    from tally.topics import ensure

    topic = f"flow-{uuid.uuid4().hex[:8]}"
    env = Env({"TALLY_KAFKA_BOOTSTRAP": broker.bootstrap})
    ensure(env.settings, {topic: (1, {})})
    producer = Producer({"bootstrap.servers": broker.bootstrap})
    for i in range(10):
        producer.produce(topic, f"r{i}".encode())
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": broker.bootstrap, "group.id": topic,
                         "auto.offset.reset": "earliest", "log_level": 0})
    flow = Flow(consumer, threading.Event())
    try:
        flow.assigned([TopicPartition(topic, 0)])
        flow.pause_all()  # an outage: every assigned partition paused
        assert not consumer.consume(10, 2)
        consumer.unassign()  # the group session expired while the broker was away
        flow.resume_all()  # the outage ends while nothing is assigned
        flow.assigned([TopicPartition(topic, 0)])  # and the partition comes back
        got: list = []
        wait_for(lambda: got.extend(m for m in consumer.consume(10, 0.5) if not m.error()) or len(got) >= 10,
                 30, "the records of the re-assigned partition")
    finally:
        consumer.close()
