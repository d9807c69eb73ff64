"""Shared fixtures: a real Kafka broker (started once per session), isolated settings
per test (own topic prefix, ports and state dir), and component processes.

Nothing here mocks Kafka or ClickHouse. The broker is Apache Kafka in KRaft
mode from infra/kafka; set TALLY_TEST_BOOTSTRAP to use an existing cluster
instead, or TALLY_TEST_BROKER=tansu to run the suite on Tansu.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tally.config import Settings
from tests.cluster import KafkaCluster
from tests.ports import free_port, free_port_pair

REPO = Path(__file__).resolve().parent.parent


def listener_ports() -> dict[str, str]:
    """Free ports for the collector, the sink's health endpoint and the dashboard."""
    return {var: str(free_port()) for var in ("TALLY_COLLECTOR_PORT", "TALLY_QUERY_PORT", "TALLY_DASHBOARD_PORT")}


def wait_for(predicate: Callable[[], object], timeout: float, what: str, interval: float = 0.2) -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


@dataclass
class Broker:
    bootstrap: str
    kind: str
    proc: subprocess.Popen | None = None
    data_dir: Path | None = None
    command: list[str] = field(default_factory=list)
    log: Path | None = None

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def start(self) -> None:
        assert self.command, "external broker: cannot start"
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.command, stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        settings = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": self.bootstrap})
        from tally.ops.stack import broker_ready

        wait_for(lambda: self._exited() or broker_ready(settings), 90, f"broker on {self.bootstrap}")
        if self._exited():
            tail = self.log.read_text(errors="replace")[-3000:] if self.log else ""
            raise RuntimeError(f"broker on {self.bootstrap} exited with {self.proc.returncode}:\n{tail}")

    def _exited(self) -> bool:
        return self.proc is not None and self.proc.poll() is not None


def start_kafka(tmp: Path, heap_mb: int = 768) -> Broker:
    """A real Kafka broker with its data and log under tmp, started and ready (tests and benches)."""
    from tally.infra import kafka

    kafka.ensure_jars()
    port = free_port_pair()
    data = tmp / "kafka"
    broker = Broker(f"127.0.0.1:{port}", "kafka", data_dir=data,
                    command=kafka.broker_command(data, port, heap_mb), log=tmp / "broker.log")
    broker.start()
    return broker


@contextmanager
def bench_kafka(tmp: Path, bootstrap: str = "", heap_mb: int = 768) -> Iterator[str]:
    """The given bootstrap, or that of a broker started under tmp and stopped on exit (benches)."""
    if bootstrap:
        yield bootstrap
        return
    print("starting a local Kafka broker...", file=sys.stderr)
    broker = start_kafka(tmp, heap_mb)
    try:
        yield broker.bootstrap
    finally:
        broker.stop()


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    external = os.environ.get("TALLY_TEST_BOOTSTRAP")
    if external:
        yield Broker(external, "external")
        return
    kind = os.environ.get("TALLY_TEST_BROKER", "kafka")
    data = tmp_path_factory.mktemp("kafka")
    if kind == "tansu":
        from tally.infra import tansu

        port = free_port_pair()
        cmd = tansu.broker_command(port)
        b = Broker(f"127.0.0.1:{port}", kind, data_dir=data, command=cmd, log=data / "broker.log")
        b.start()
    else:
        b = start_kafka(data)
    yield b
    b.stop()


@dataclass
class Env:
    """Settings for one test: its own topics, ports and state dir on the shared broker."""

    vars: dict[str, str]

    @property
    def settings(self) -> Settings:
        return Settings.from_env(self.vars)

    def child_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
        env.update(self.vars)
        return env


@pytest.fixture
def tally_env(broker: Broker, tmp_path: Path) -> Env:
    return isolated_env(broker.bootstrap, tmp_path)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[KafkaCluster]:
    """A 3-node Kafka cluster (KRaft, every node a broker and controller; replication
    factor 3 and min.insync.replicas 2 by default), for the tests of one module."""
    c = KafkaCluster.create(tmp_path_factory.mktemp("cluster"), nodes=3, heap_mb=320)
    try:
        c.start()
        yield c
    finally:
        c.close()


@pytest.fixture
def cluster_env(cluster: KafkaCluster, tmp_path: Path) -> Env:
    """Settings for one test on the 3-node cluster, through a comma-separated bootstrap list,
    with the replication settings given explicitly (the cluster's defaults are the same)."""
    return isolated_env(cluster.bootstrap, tmp_path, TALLY_TOPIC_REPLICATION_FACTOR="3",
                    TALLY_TOPIC_MIN_INSYNC_REPLICAS="2")


def isolated_env(bootstrap: str, tmp_path: Path, **extra: str) -> Env:
    """Settings for one test: its own topics (created), ports and state dir on a cluster."""
    tag = uuid.uuid4().hex[:8]
    env = Env({
        "TALLY_KAFKA_BOOTSTRAP": bootstrap,
        "TALLY_STATE_DIR": str(tmp_path / "state"),
        "TALLY_TOPIC_PREFIX": f"t{tag}.",
        "TALLY_TOPIC_PARTITIONS": "4",
        "TALLY_APP_ID": f"tally-test-{tag}",
        **listener_ports(),
        "TALLY_ALLOWED_SITES": "example.com,localhost",
        "TALLY_SINK_BATCH_SECONDS": "0.2",
        "TALLY_LOG_LEVEL": "info",
        **extra,
    })
    from tally.topics import ensure_topics

    ensure_topics(env.settings)
    return env


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> None:
        if self.popen.poll() is not None:
            return
        try:
            os.killpg(self.popen.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait(10)

    def output(self) -> str:
        return self.log.read_text(errors="replace")


@pytest.fixture
def spawn(tmp_path: Path) -> Iterator[Callable[..., Proc]]:
    """Start `tally <args>` as a real process; every one is stopped at teardown."""
    procs: list[Proc] = []

    def start(env: Env, *args: str, name: str | None = None) -> Proc:
        name = name or args[0]
        log = tmp_path / f"{name}-{len(procs)}.log"
        with open(log, "wb") as fh:
            popen = subprocess.Popen([sys.executable, "-m", "tally.ops", *args], cwd=REPO,
                                     env=env.child_env(), stdout=fh, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        proc = Proc(name, popen, log)
        procs.append(proc)
        return proc

    yield start
    for p in reversed(procs):
        p.stop()


def start_pipeline(env: Env, spawn: Callable[..., Proc]) -> tuple[Proc, Proc, Proc]:
    """Sink, worker and collector as real processes, returned once each is ready."""
    from tally.ops.stack import http_ok, worker_ready

    s = env.settings
    procs = (spawn(env, "sink"), spawn(env, "worker"), spawn(env, "collector"))
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.collector_port}/healthz"), 30, "collector")
    wait_for(lambda: worker_ready(s), 90, "worker in its consumer group")
    return procs


def tally_bin() -> str:
    return shutil.which("tally", path=str(Path(sys.executable).parent)) or "tally"
