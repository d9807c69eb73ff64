"""`tally up / status / down` on a fresh state dir: the real broker, chDB, and every process."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tally.config import Settings
from tests.conftest import REPO, free_port_pair, listener_ports, wait_for
from tests.helpers import BROWSER_UA, collect_url, post_json, query_rows

pytestmark = pytest.mark.integration


def tally(env: dict[str, str], *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tally.ops", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)


def stack_env(tmp_path: Path, broker: str = "kafka") -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
    env.update({
        "TALLY_STATE_DIR": str(tmp_path / "state"),
        "TALLY_BROKER": broker,
        "TALLY_BROKER_PORT": str(free_port_pair()),
        **listener_ports(),
        "TALLY_EDGE_SECRET": "edge-secret-for-the-stack-test-Zq8Xw3Rv",
        "TALLY_TOPIC_PARTITIONS": "3",
        "TALLY_SINK_BATCH_SECONDS": "0.2",
        "TALLY_ALLOWED_SITES": "stack.test",
        "TALLY_RAW_RETENTION_DAYS": "123",
    })
    return env


def pids(state: Path) -> dict[str, int]:
    return {p.stem: json.loads(p.read_text())["pid"] for p in (state / "run").glob("*.pid")}


def alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def send_and_count(settings: Settings, path: str, n: int, expected_total: int) -> None:
    for _ in range(n):
        status, body, _ = post_json(collect_url(settings), {"site": "stack.test", "path": path},
                                    headers={"User-Agent": BROWSER_UA})
        assert status == 204, body
    t0 = time.monotonic()
    # FINAL: a worker killed with its broker may replay a batch; rows fold by event_id.
    wait_for(lambda: query_rows(settings, "SELECT count() FROM pageviews FINAL")[0][0] == expected_total,
             30, f"{expected_total} rows")
    return time.monotonic() - t0


def test_up_query_down_and_broker_persistence(tmp_path):
    env = stack_env(tmp_path)
    settings = Settings.from_env(env)
    state = settings.state_dir
    try:
        # Two `up` at once: one starts every component, the other waits for it and finds
        # them running (without the lock both would start them, and `down` could stop one).
        both = [subprocess.Popen([sys.executable, "-m", "tally.ops", "up"], cwd=REPO, env=env, text=True,
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE) for _ in range(2)]
        outs = [p.communicate(timeout=300) for p in both]
        assert [p.returncode for p in both] == [0, 0], outs
        names = ("broker", "sink", "worker", "collector", "dashboard")
        errs = [err for _, err in outs]
        up = next(p for p in outs if "started broker" in p[1])
        up = subprocess.CompletedProcess([], 0, *up)
        for name in names:
            assert sum(err.count(f"started {name} ") for err in errs) == 1, errs
        other = next(err for err in errs if err is not up.stderr)
        assert other.count("already running") == len(names) and "waiting for another" in other, other
        # What `up` keeps for later commands is its owner's only, and holds no secret.
        saved = state / "run" / "env.json"
        assert stat.S_IMODE(saved.stat().st_mode) == 0o600
        assert "edge-secret-for-the-stack-test" not in saved.read_text() + up.stdout + up.stderr
        assert stat.S_IMODE(state.stat().st_mode) == 0o700

        # Retention setting given to `up` reached the sink, which created the table with it.
        ddl = query_rows(settings, "SHOW CREATE TABLE pageviews")[0][0]
        assert "toIntervalDay(123)" in ddl

        elapsed = send_and_count(settings, "/first", 1, 1)
        assert elapsed < 10  # acceptance: visible through tally query within 10 s

        again = tally(env, "up")
        assert again.returncode == 0 and again.stderr.count("already running") == len(names)

        # status finds the stack from the state dir alone (ports come from run/env.json).
        bare = {k: v for k, v in env.items() if k not in ("TALLY_COLLECTOR_PORT", "TALLY_QUERY_PORT",
                                                          "TALLY_BROKER_PORT", "TALLY_DASHBOARD_PORT",
                                                          "TALLY_EDGE_SECRET")}
        status = json.loads(tally(bare, "status", "--json").stdout)
        comps = {c["component"]: c for c in status["components"]}
        assert set(comps) == {"broker", "sink", "worker", "collector", "dashboard"}
        assert all(c["ready"] for c in comps.values()), comps
        groups = {g["group"]: g for g in status["groups"]}
        stream = groups[settings.app_id]
        assert stream["state"] == "stable" and len(stream["members"]) == 1
        assert stream["members"][0]["partitions"][settings.topic("beacons.raw")] == [0, 1, 2]
        lag = {t["topic"]: t for t in stream["lag"]}
        assert lag[settings.topic("beacons.raw")]["total"] >= 0
        assert groups[f"{settings.app_id}-sink"]["members"], groups

        # kill -9 the broker, bring the stack back: topics and data survive.
        os.kill(pids(state)["broker"], signal.SIGKILL)
        wait_for(lambda: not alive(pids(state).get("broker", 0)), 10, "broker gone")
        up2 = tally(env, "up")
        assert up2.returncode == 0, up2.stderr
        assert "started broker" in up2.stderr and "created topics" not in up2.stderr
        send_and_count(settings, "/second", 2, 3)
        from confluent_kafka import Consumer, TopicPartition

        c = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "probe"})
        try:
            offsets = [c.get_watermark_offsets(TopicPartition(settings.topic("beacons.raw"), p), timeout=10)
                       for p in range(3)]
        finally:
            c.close()
        assert sum(hi for _, hi in offsets) >= 2  # records written before the kill are still there
    finally:
        started = pids(state)
        down = tally(env, "down")
    assert down.returncode == 0, down.stderr
    assert started and not any(alive(p) for p in started.values()), started
    assert not list((state / "run").glob("*.pid"))


def test_down_when_nothing_runs_is_harmless(tmp_path):
    res = tally(stack_env(tmp_path), "down")
    assert res.returncode == 0


def test_up_with_three_brokers_status_and_down(tmp_path):
    """TALLY_KAFKA_BROKERS=3: a 3-node KRaft quorum, every topic (Faust's and the changelogs
    included) replicated 3 times with min.insync.replicas 2, a status row per node, and the
    stack keeps working with a node down."""
    from confluent_kafka.admin import AdminClient
    from tally.streams.state import faust_topics, state_topics

    from tally.topics import specs
    from tests.cluster import replication
    from tests.ports import free_port_block

    env = stack_env(tmp_path)
    env.update({"TALLY_KAFKA_BROKERS": "3", "TALLY_BROKER_PORT": str(free_port_block(6)),
                "TALLY_BROKER_HEAP_MB": "320"})
    settings = Settings.from_env(env)
    state = settings.state_dir
    nodes = ("broker-1", "broker-2", "broker-3")
    try:
        up = tally(env, "up")
        assert up.returncode == 0, up.stderr
        for name in (*nodes, "sink", "worker", "collector", "dashboard"):
            assert f"started {name}" in up.stderr
        status = json.loads(tally(env, "status", "--json").stdout)
        comps = {c["component"]: c for c in status["components"]}
        assert list(comps) == [*nodes, "sink", "worker", "collector", "dashboard"]
        assert all(c["ready"] for c in comps.values()), comps

        topics = ([settings.topic(t.name) for t in specs(settings)] + list(state_topics(settings).values())
                  + list(faust_topics(settings)))
        got = replication(AdminClient({"bootstrap.servers": settings.bootstrap}), [*topics, "__consumer_offsets"])
        assert {t: v[:2] for t, v in got.items()} == dict.fromkeys([*topics, "__consumer_offsets"], (3, 2))
        send_and_count(settings, "/three", 1, 1)

        # One node SIGKILLed: its row says so, the others stay ready, beacons still get stored.
        os.kill(pids(state)["broker-2"], signal.SIGKILL)
        wait_for(lambda: not alive(pids(state).get("broker-2", 0)), 10, "node 2 gone")
        out = tally(env, "status", "--json")
        assert out.returncode == 0, out.stderr
        rows = {c["component"]: c for c in json.loads(out.stdout)["components"]}
        assert not rows["broker-2"]["ready"] and rows["broker-2"]["pid"] is None
        assert rows["broker-1"]["ready"] and rows["broker-3"]["ready"]
        send_and_count(settings, "/two-of-three", 2, 3)

        # `tally up` again, with no settings given: the stack's own (three nodes) restart node 2 only.
        bare = {k: v for k, v in env.items() if k not in ("TALLY_KAFKA_BROKERS", "TALLY_BROKER_PORT")}
        again = tally(bare, "up")
        assert again.returncode == 0, again.stderr
        assert "started broker-2" in again.stderr and again.stderr.count("already running") == 6
        assert "started broker " not in again.stderr  # no single broker on the default port
    finally:
        started = pids(state)
        down = tally(env, "down")
    assert down.returncode == 0, down.stderr
    assert set(started) >= set(nodes) and not any(alive(p) for p in started.values()), started
    assert not list((state / "run").glob("*.pid"))


def test_status_with_the_stack_down_says_so_in_one_line(tmp_path):
    env = stack_env(tmp_path)  # a broker port nothing listens on, an empty state dir
    out = tally(env, "status", timeout=60)
    assert out.returncode == 3, out.stderr
    assert out.stdout.splitlines() == [f"Tally is not running: no component is up (state dir {tmp_path / 'state'}); "
                                       "`tally up` starts it."]
    assert out.stderr == ""  # no librdkafka connection errors
    as_json = json.loads(tally(env, "status", "--json", timeout=60).stdout)
    assert as_json["running"] is False and not any(c["pid"] or c["ready"] for c in as_json["components"])
