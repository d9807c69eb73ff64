"""A real Apache Kafka broker (single-node KRaft) for the local stack and the tests.

The jars come from Maven Central through `infra/kafka/pom.xml`; the log dir
lives under the state directory so topics and data survive a restart.
"""

from __future__ import annotations

import base64
import shutil
import subprocess
import uuid
from pathlib import Path

KAFKA_DIR = Path(__file__).parent / "kafka"
LIB_DIR = KAFKA_DIR / "lib"
POM = KAFKA_DIR / "pom.xml"
LOG4J = KAFKA_DIR / "log4j.properties"


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


def write_config(data_dir: Path, port: int, controller_port: int) -> Path:
    data_dir.mkdir(parents=True, exist_ok=True)
    props = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@127.0.0.1:{controller_port}",
        "listeners": f"PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://127.0.0.1:{port}",
        "controller.listener.names": "CONTROLLER",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "log.dirs": str(data_dir / "logs"),
        "auto.create.topics.enable": "false",
        "num.partitions": "1",
        "offsets.topic.replication.factor": "1",
        "offsets.topic.num.partitions": "12",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "transaction.state.log.num.partitions": "4",
        "group.initial.rebalance.delay.ms": "0",
        "log.cleaner.backoff.ms": "5000",
    }
    path = data_dir / "server.properties"
    path.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
    return path


def format_storage(data_dir: Path, config: Path) -> None:
    """Format the KRaft log dir once; a formatted dir keeps its cluster id and data."""
    if (data_dir / "logs" / "meta.properties").exists():
        return
    cluster_id = "-"
    while cluster_id.startswith("-"):  # StorageTool would read a leading "-" as an option
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
    subprocess.run(
        [java(), "-cp", classpath(), f"-Dlog4j.configuration=file:{LOG4J}",
         "kafka.tools.StorageTool", "format", "-t", cluster_id, "-c", str(config)],
        check=True, stdout=subprocess.DEVNULL,
    )


def broker_command(data_dir: Path, port: int, heap_mb: int) -> list[str]:
    """Prepare the data dir and return the command line that runs the broker."""
    config = write_config(data_dir, port, port + 1)
    format_storage(data_dir, config)
    return [
        java(), f"-Xmx{heap_mb}m", f"-Xms{min(heap_mb, 256)}m", "-XX:+UseG1GC",
        "-Djava.awt.headless=true", f"-Dlog4j.configuration=file:{LOG4J}",
        "-cp", classpath(), "kafka.Kafka", str(config),
    ]
