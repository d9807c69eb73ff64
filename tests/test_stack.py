"""`tally up / status / down` on a fresh state dir: the real broker, chDB, and every process."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tally.config import Settings
from tests.conftest import REPO, free_port, free_port_pair, wait_for
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
        "TALLY_COLLECTOR_PORT": str(free_port()),
        "TALLY_QUERY_PORT": str(free_port()),
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
        up = tally(env, "up")
        assert up.returncode == 0, up.stderr
        for name in ("broker", "sink", "worker", "collector"):
            assert f"started {name}" in up.stderr

        # Retention setting given to `up` reached the sink, which created the table with it.
        ddl = query_rows(settings, "SHOW CREATE TABLE pageviews")[0][0]
        assert "toIntervalDay(123)" in ddl

        elapsed = send_and_count(settings, "/first", 1, 1)
        assert elapsed < 10  # acceptance: visible through tally query within 10 s

        again = tally(env, "up")
        assert again.returncode == 0 and again.stderr.count("already running") == 4

        # status finds the stack from the state dir alone (ports come from run/env.json).
        bare = {k: v for k, v in env.items() if k not in ("TALLY_COLLECTOR_PORT", "TALLY_QUERY_PORT",
                                                          "TALLY_BROKER_PORT")}
        status = json.loads(tally(bare, "status", "--json").stdout)
        comps = {c["component"]: c for c in status["components"]}
        assert set(comps) == {"broker", "sink", "worker", "collector"}
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
