"""A local multi-node Kafka cluster (KRaft, infra/kafka.py) as real processes, for tests and
chaos scenarios: start, stop and SIGKILL single nodes, find a partition's leader, wait for
the cluster to heal.

    cluster = KafkaCluster.create(tmp_path / "kafka", nodes=3, heap_mb=320)
    cluster.start()                     # every node, ready
    leader = cluster.leader("tally.beacons.raw", 0)
    cluster.kill(leader)                # SIGKILL
    cluster.start(leader)               # back, ready
    cluster.wait_in_sync(["tally.beacons.raw"])
    cluster.close()
"""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka.admin import AdminClient, ConfigSource
from tally.infra import kafka
from tally.infra.kafka import Node
from tally.ops.stack import kafka_node_live

from tally.config import Settings
from tally.topics import topic_configs
from tests.ports import free_port_block


@dataclass
class KafkaCluster:
    base_dir: Path
    nodes: list[Node]
    heap_mb: int
    procs: dict[int, subprocess.Popen] = field(default_factory=dict)

    @classmethod
    def create(cls, base_dir: Path, nodes: int = 3, heap_mb: int = 320) -> KafkaCluster:
        kafka.ensure_jars()
        first = free_port_block(2 * nodes)
        return cls(base_dir, kafka.cluster_nodes(base_dir, first, nodes), heap_mb)

    @property
    def bootstrap(self) -> str:
        return kafka.bootstrap(self.nodes)

    def node(self, node_id: int) -> Node:
        return self.nodes[node_id - 1]

    def log(self, node_id: int) -> Path:
        return self.base_dir / f"node-{node_id}.log"

    def admin(self) -> AdminClient:
        # log_level 2: a node down is the point here, not news on stderr
        return AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 2})

    # --- processes -----------------------------------------------------------

    def launch(self, node_id: int) -> None:
        """Start one node's process without waiting for it."""
        assert not self.alive(node_id), f"node {node_id} runs already"
        cmd = kafka.node_command(self.base_dir, self.nodes, node_id, self.heap_mb)
        with open(self.log(node_id), "ab") as log:
            self.procs[node_id] = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                   start_new_session=True)

    def start(self, *node_ids: int, timeout: float = 150) -> None:
        """Start the given nodes (default: every node not running) together, and wait until
        each is a live broker of the cluster. A quorum elects its leader only once a
        majority of the voters runs, so nodes are launched before any is waited for."""
        ids = list(node_ids) or [n.node_id for n in self.nodes if not self.alive(n.node_id)]
        for i in ids:
            self.launch(i)
        deadline = time.monotonic() + timeout
        for i in ids:
            while not kafka_node_live(self.node(i).address, i):
                if not self.alive(i):
                    raise RuntimeError(f"kafka node {i} exited; see {self.log(i)}")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"kafka node {i} not live after {timeout:.0f}s; see {self.log(i)}")
                time.sleep(0.3)
        # Live, and known as such by every running node: a client's first metadata answer
        # must not miss a node (librdkafka would drop its connection, failing a request on it).
        while not all(set(self.running()) <= self._live_seen_by(i) for i in self.running()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the nodes do not agree on who is live after {timeout:.0f}s")
            time.sleep(0.3)

    def _live_seen_by(self, node_id: int) -> set[int]:
        client = AdminClient({"bootstrap.servers": self.node(node_id).address, "log_level": 2})
        try:
            return set(client.list_topics(timeout=3).brokers)
        except Exception:
            return set()

    def alive(self, node_id: int) -> bool:
        proc = self.procs.get(node_id)
        return proc is not None and proc.poll() is None

    def running(self) -> list[int]:
        return [n.node_id for n in self.nodes if self.alive(n.node_id)]

    def stop(self, node_id: int, sig: int = signal.SIGTERM, timeout: float = 60) -> None:
        """Signal one node and wait for its process to end (SIGKILL after timeout)."""
        proc = self.procs.get(node_id)
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)

    def kill(self, *node_ids: int) -> None:
        """SIGKILL: no controlled shutdown, no flush; what a crash or an OOM kill does."""
        for i in node_ids:
            proc = self.procs.get(i)
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
        for i in node_ids:
            self.stop(i, signal.SIGKILL)

    def close(self) -> None:
        """Stop every node at once (one by one, the last would wait for a lost quorum)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for i in list(self.procs):
            self.stop(i, timeout=30)

    # --- what the cluster says ---------------------------------------------------

    def settings(self, **env: str) -> Settings:
        return Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": self.bootstrap, **env})

    def leader(self, topic: str, partition: int, timeout: float = 30) -> int:
        """The node leading a partition, as the live nodes see it (-1: none)."""
        meta = self.admin().list_topics(topic, timeout=timeout)
        return meta.topics[topic].partitions[partition].leader

    def leaders(self, topic: str, timeout: float = 30) -> dict[int, int]:
        meta = self.admin().list_topics(topic, timeout=timeout)
        return {p: m.leader for p, m in meta.topics[topic].partitions.items()}

    def replication(self, topics: Iterable[str], timeout: float = 30) -> dict[str, tuple[int, int, bool]]:
        return replication(self.admin(), topics, timeout)

    def in_sync(self, topics: Iterable[str]) -> bool:
        """Every partition of these topics has a leader and all its replicas in sync."""
        try:
            meta = self.admin().list_topics(timeout=10)
        except Exception:
            return False
        for t in topics:
            if t not in meta.topics or meta.topics[t].error is not None:
                return False
            for p in meta.topics[t].partitions.values():
                if p.leader < 0 or sorted(p.isrs) != sorted(p.replicas):
                    return False
        return True

    def wait_in_sync(self, topics: Iterable[str], timeout: float = 120) -> None:
        topics = list(topics)
        deadline = time.monotonic() + timeout
        while not self.in_sync(topics):
            if time.monotonic() > deadline:
                raise TimeoutError(f"partitions of {topics} not fully in sync after {timeout:.0f}s")
            time.sleep(0.5)

    def wait_leader_elsewhere(self, topic: str, partition: int, old: int, timeout: float = 60) -> int:
        """Wait until a node other than `old` leads the partition; return it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                now = self.leader(topic, partition, timeout=5)
            except Exception:
                now = -1
            if now not in (-1, old):
                return now
            time.sleep(0.3)
        raise TimeoutError(f"{topic}[{partition}] still led by {old} (or by none) after {timeout:.0f}s")


def replication(client: AdminClient, topics: Iterable[str], timeout: float = 30) -> dict[str, tuple[int, int, bool]]:
    """Per topic: (replication factor, min.insync.replicas, whether that value is set on the
    topic itself rather than inherited from the broker's default)."""
    names = list(topics)
    deadline = time.monotonic() + timeout
    # A topic just created reaches every node's metadata within moments, not at once.
    while not set(names) <= set(meta := client.list_topics(timeout=timeout).topics):
        if time.monotonic() > deadline:
            raise TimeoutError(f"topics missing from the metadata: {set(names) - set(meta)}")
        time.sleep(0.2)
    out = {}
    for name, configs in topic_configs(client, names, timeout).items():
        entry = configs["min.insync.replicas"]
        replicas = {len(p.replicas) for p in meta[name].partitions.values()}
        assert len(replicas) == 1, f"{name}: partitions with different replica counts {replicas}"
        out[name] = (replicas.pop(), int(entry.value), entry.source == ConfigSource.DYNAMIC_TOPIC_CONFIG.value)
    return out
