"""docker-compose.yml cannot run here (no Docker engine), so check that it agrees
with the code: variables, commands, and the processes of the architecture."""

from __future__ import annotations

import re
from pathlib import Path

import yaml
from click.testing import CliRunner
from tally.ops.cli import main

from tally.config import VARIABLES, Settings

REPO = Path(__file__).resolve().parent.parent
COMPOSE = yaml.safe_load((REPO / "docker-compose.yml").read_text())
SERVICES = COMPOSE["services"]
OPERATOR_SET = "Zk3pQ9vL2xT7mB4nR8wY1sD6fH0jG5cA+e/iOp1="
TALLY_SERVICES = [n for n, s in SERVICES.items() if s.get("image") == "tally:latest"]


KAFKA = sorted(n for n in SERVICES if n.startswith("kafka-"))


def test_has_the_production_stack():
    assert {"schema-registry", "clickhouse", "collector", "worker", "sink", "dashboard"} <= set(SERVICES)
    assert SERVICES["worker"]["deploy"]["replicas"] >= 2
    assert KAFKA == ["kafka-1", "kafka-2", "kafka-3"]


def test_kafka_is_one_three_node_kraft_quorum_replicating_three_times():
    envs = [SERVICES[n]["environment"] for n in KAFKA]
    assert sorted(int(e["KAFKA_NODE_ID"]) for e in envs) == [1, 2, 3]
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in envs}
    assert voters == {"1@kafka-1:9093,2@kafka-2:9093,3@kafka-3:9093"}
    assert len({e["CLUSTER_ID"] for e in envs}) == 1
    volumes = [SERVICES[n]["volumes"][0].split(":") for n in KAFKA]
    assert len({v[0] for v in volumes}) == 3 and all(v[1] == e["KAFKA_LOG_DIRS"] for v, e in zip(volumes, envs, strict=True))
    for name, e in zip(KAFKA, envs, strict=True):
        assert e["KAFKA_PROCESS_ROLES"] == "broker,controller"
        assert e["KAFKA_ADVERTISED_LISTENERS"] == f"PLAINTEXT://{name}:9092"
        assert int(e["KAFKA_DEFAULT_REPLICATION_FACTOR"]) == int(e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"]) == 3
        assert int(e["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"]) == 3
        assert int(e["KAFKA_MIN_INSYNC_REPLICAS"]) == int(e["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"]) == 2


def test_every_client_lists_every_broker_and_tally_replicates_three_times():
    everyone = ",".join(f"{n}:9092" for n in KAFKA)
    assert SERVICES["schema-registry"]["environment"]["SCHEMA_REGISTRY_KAFKASTORE_BOOTSTRAP_SERVERS"] == everyone
    for name in TALLY_SERVICES:
        env = {k: interpolate(str(v)) for k, v in SERVICES[name]["environment"].items()}
        s = Settings.from_env(env)
        assert s.bootstrap == everyone, name
        assert (s.replication_factor, s.min_insync_replicas) == (3, 2), name


def test_every_variable_is_one_the_code_reads():
    known = {v.env for v in VARIABLES}
    for name in TALLY_SERVICES:
        env = SERVICES[name]["environment"]
        unknown = {k for k in env if k.startswith("TALLY_")} - known
        assert not unknown, f"{name}: variables the code does not read: {unknown}"


def interpolate(value: str) -> str:
    """Compose's ${VAR:-default} and ${VAR:?error} with nothing set in the environment (a
    required value stands for what an operator sets: random, as `openssl rand -base64 32`)."""
    return re.sub(r"\$\{\w+(?::-([^}]*)|:\?[^}]*)\}", lambda m: m[1] if m[1] is not None else OPERATOR_SET,
                  value)


def test_values_parse_with_the_code_validation():
    for name in TALLY_SERVICES:
        env = {k: interpolate(str(v)) for k, v in SERVICES[name]["environment"].items()}
        s = Settings.from_env(env)
        assert not s.local_broker and not s.embedded_clickhouse, name
        if name == "dashboard":  # reads with its own user, never with the sink's credentials
            assert "@" not in s.clickhouse_url and s.dashboard_clickhouse_url.startswith("http://tally_dashboard:")
            assert s.dashboard_host == "0.0.0.0" and s.dashboard_port == 8001
        else:
            assert s.clickhouse_url.startswith("http://tally:tally@clickhouse:8123"), name
        assert s.analyst_clickhouse_url.startswith("http://tally_analyst:"), name


def test_commands_are_real_tally_commands():
    for name in TALLY_SERVICES:
        cmd = SERVICES[name]["command"]
        assert cmd[0] == "tally", name
        res = CliRunner().invoke(main, [*cmd[1:], "--help"])
        assert res.exit_code == 0, f"{name}: `{' '.join(cmd)}` is not a tally command: {res.output}"
