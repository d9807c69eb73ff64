"""A real Apache Kafka cluster (KRaft) for the local stack and the tests: one node, or N.

The jars come from Maven Central through `infra/kafka/pom.xml`; the log dirs
live under the state directory so topics and data survive a restart.

Every node is a combined broker and controller. Node i (1-based) of a cluster
whose first port is P listens on P + 2(i-1) for clients and on the next port
for the controller quorum, so a single node keeps the layout P, P+1. A cluster
of N nodes shares one cluster id (formatted into every node's log dir) and
one `controller.quorum.voters` list; its broker defaults size the replication
of internal and new topics to the cluster: replication factor min(3, N), and
`min.insync.replicas` 2 from three nodes on (acks=all then survives one node
down and refuses writes that only one copy would hold).
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

from tally.config import replication_defaults

KAFKA_DIR = Path(__file__).parent / "kafka"
LIB_DIR = KAFKA_DIR / "lib"
POM = KAFKA_DIR / "pom.xml"
LOG4J = KAFKA_DIR / "log4j.properties"
HOST = "127.0.0.1"


class BrokerSetupError(RuntimeError):
    pass


def ensure_jars() -> Path:
    """Resolve the broker's jars once; fast when already done (a stamp records the pom)."""
    stamp = LIB_DIR / ".pom-stamp"
    pom_text = POM.read_text()
    if stamp.exists() and stamp.read_text() == pom_text and any(LIB_DIR.glob("kafka_2.13-*.jar")):
        return LIB_DIR
    if not shutil.which("mvn"):
        raise BrokerSetupError("Maven (mvn) is needed to fetch the Kafka broker jars; install maven")
    if LIB_DIR.exists():
        shutil.rmtree(LIB_DIR)
    subprocess.run(["mvn", "-q", "-B", "-f", str(POM), "dependency:copy-dependencies"], check=True)
    stamp.write_text(pom_text)
    return LIB_DIR


def classpath() -> str:
    jars = sorted(str(p) for p in LIB_DIR.glob("*.jar"))
    if not jars:
        raise BrokerSetupError(f"no Kafka jars in {LIB_DIR}; run `tally setup` (or make setup) first")
    return ":".join(jars)


def java() -> str:
    path = shutil.which("java")
    if not path:
        raise BrokerSetupError("a Java runtime (java) is needed to run the Kafka broker")
    return path


@dataclass(frozen=True)
class Node:
    """One node of a local cluster: its id, client and controller ports, and data dir."""

    node_id: int
    port: int
    controller_port: int
    data_dir: Path

    @property
    def address(self) -> str:
        return f"{HOST}:{self.port}"


def cluster_nodes(base_dir: Path, first_port: int, count: int) -> list[Node]:
    """The nodes of a local cluster. One node keeps its data in base_dir itself (the
    layout of a single broker); N nodes in base_dir/node-<i>."""
    if count == 1:
        return [Node(1, first_port, first_port + 1, base_dir)]
    return [Node(i, first_port + 2 * (i - 1), first_port + 2 * (i - 1) + 1, base_dir / f"node-{i}")
            for i in range(1, count + 1)]


def bootstrap(nodes: list[Node]) -> str:
    return ",".join(n.address for n in nodes)


def node_properties(node: Node, nodes: list[Node]) -> dict[str, str]:
    replicas, min_isr = replication_defaults(len(nodes))
    return {
        "process.roles": "broker,controller",
        "node.id": str(node.node_id),
        "controller.quorum.voters": ",".join(f"{n.node_id}@{HOST}:{n.controller_port}" for n in nodes),
        "listeners": f"PLAINTEXT://{HOST}:{node.port},CONTROLLER://{HOST}:{node.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{node.address}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(node.data_dir / "logs"),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "default.replication.factor": str(replicas),
        "min.insync.replicas": str(min_isr),
        "offsets.topic.replication.factor": str(replicas),
        "offsets.topic.num.partitions": "12",
        "transaction.state.log.replication.factor": str(replicas),
        "transaction.state.log.min.isr": str(min_isr),
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.backoff.ms": "5000",
    }


def write_node_config(node: Node, nodes: list[Node]) -> Path:
    node.data_dir.mkdir(parents=True, exist_ok=True)
    path = node.data_dir / "server.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in node_properties(node, nodes).items()))
    return path


def write_config(data_dir: Path, port: int, controller_port: int) -> Path:
    """The config of a single-node cluster."""
    node = Node(1, port, controller_port, data_dir)
    return write_node_config(node, [node])


def new_cluster_id() -> str:
    cluster_id = "-"
    while cluster_id.startswith("-"):  # StorageTool would read a leading "-" as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    return cluster_id


def cluster_id_of(base_dir: Path) -> str:
    """The id shared by every node of the cluster in base_dir, made once and kept there."""
    path = base_dir / "cluster.id"
    if not path.exists():
        base_dir.mkdir(parents=True, exist_ok=True)
        path.write_text(new_cluster_id())
    return path.read_text().strip()


def format_storage(data_dir: Path, config: Path, cluster_id: str | None = None) -> None:
    """Format the KRaft log dir once; a formatted dir keeps its cluster id and data."""
    if (data_dir / "logs" / "meta.properties").exists():
        return
    subprocess.run(
        [java(), "-cp", classpath(), f"-Dlog4j.configuration=file:{LOG4J}",
         "kafka.tools.StorageTool", "format", "-t", cluster_id or new_cluster_id(), "-c", str(config)],
        check=True, stdout=subprocess.DEVNULL,
    )


def _run_command(config: Path, heap_mb: int) -> list[str]:
    return [
        java(), f"-Xmx{heap_mb}m", f"-Xms{min(heap_mb, 256)}m", "-XX:+UseG1GC",
        "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{LOG4J}",
        "-cp", classpath(), "kafka.Kafka", str(config),
    ]


def broker_command(data_dir: Path, port: int, heap_mb: int) -> list[str]:
    """Prepare a single node's data dir and return the command line that runs it."""
    config = write_config(data_dir, port, port + 1)
    format_storage(data_dir, config)
    return _run_command(config, heap_mb)


def node_command(base_dir: Path, nodes: list[Node], node_id: int, heap_mb: int) -> list[str]:
    """Prepare one node of a cluster (config, and its log dir formatted with the cluster's
    shared id) and return the command line that runs it. Start every node: a quorum of
    N voters elects a leader only once a majority runs."""
    node = next(n for n in nodes if n.node_id == node_id)
    config = write_node_config(node, nodes)
    format_storage(node.data_dir, config, cluster_id_of(base_dir))
    return _run_command(config, heap_mb)
