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


def test_has_the_production_stack():
    assert {"kafka", "schema-registry", "clickhouse", "collector", "worker", "sink"} <= set(SERVICES)
    assert SERVICES["worker"]["deploy"]["replicas"] >= 2
    assert "KRaft" in (REPO / "docker-compose.yml").read_text() or \
        SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


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
        assert s.clickhouse_url.startswith("http://tally:tally@clickhouse:8123"), name
        assert not s.local_broker and not s.embedded_clickhouse, name


def test_commands_are_real_tally_commands():
    for name in TALLY_SERVICES:
        cmd = SERVICES[name]["command"]
        assert cmd[0] == "tally", name
        res = CliRunner().invoke(main, [*cmd[1:], "--help"])
        assert res.exit_code == 0, f"{name}: `{' '.join(cmd)}` is not a tally command: {res.output}"
