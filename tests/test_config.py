"""Settings: defaults, validation naming the variable, and docs generated from code."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tally.config import Settings, SettingsError, configuration_markdown

REPO = Path(__file__).resolve().parent.parent


def test_defaults_run_the_local_stack():
    s = Settings.from_env({})
    assert s.collector_port == 8000 and s.bootstrap == "127.0.0.1:9092"
    assert s.state_dir.name == ".tally" and s.embedded_clickhouse and s.local_broker
    assert s.raw_retention_days == 540 and s.product_retention_days == 90


@pytest.mark.parametrize(("var", "value", "needle"), [
    ("TALLY_COLLECTOR_PORT", "abc", "expected an integer"),
    ("TALLY_COLLECTOR_PORT", "70000", "<= 65535"),
    ("TALLY_BROKER", "redpanda", "kafka, tansu"),
    ("TALLY_TRUSTED_PROXIES", "10.0.0.0/8,nonsense", "nonsense"),
    ("TALLY_KAFKA_BOOTSTRAP", "localhost", "host:port"),
    ("TALLY_CLICKHOUSE_URL", "ftp://x", "http"),
    ("TALLY_SINK_BATCH_SECONDS", "soon", "number"),
])
def test_bad_values_name_the_variable(var, value, needle):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({var: value})
    assert str(err.value).startswith(f"{var}: ") and needle in str(err.value)


def test_bad_value_stops_the_cli_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "tally.ops", "up"], capture_output=True, text=True,
                          env={"TALLY_COLLECTOR_PORT": "eighty", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TALLY_COLLECTOR_PORT" in lines[0] and "eighty" in lines[0]


def test_configuration_doc_is_current():
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == configuration_markdown(), "docs/configuration.md is stale: run `tally config docs`"
