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
    ("TALLY_KAFKA_BOOTSTRAP", "a:9092;b:9092", "separate hosts with commas"),
    ("TALLY_KAFKA_BROKERS", "0", ">= 1"),
    ("TALLY_TOPIC_REPLICATION_FACTOR", "three", "expected an integer"),
])
def test_bad_values_name_the_variable(var, value, needle):
    with pytest.raises(SettingsError) as err:
        Settings.from_env({var: value})
    assert str(err.value).startswith(f"{var}: ") and needle in str(err.value)


def test_replication_follows_the_local_cluster_and_leaves_an_external_one_its_defaults():
    one, three = Settings.from_env({}), Settings.from_env({"TALLY_KAFKA_BROKERS": "3"})
    assert (one.replication_factor, one.min_insync_replicas) == (1, 1)
    assert (three.replication_factor, three.min_insync_replicas) == (3, 2)
    assert three.bootstrap == "127.0.0.1:9092,127.0.0.1:9094,127.0.0.1:9096"
    assert Settings.from_env({"TALLY_KAFKA_BROKERS": "5"}).replication_factor == 3
    external = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": " k1:9092, k2:9092 ,k3:9092"})
    assert external.bootstrap == "k1:9092,k2:9092,k3:9092"
    assert external.bootstrap_hosts == ["k1:9092", "k2:9092", "k3:9092"]
    assert (external.replication_factor, external.min_insync_replicas) == (None, None)
    chosen = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": "k1:9092", "TALLY_TOPIC_REPLICATION_FACTOR": "3",
                                "TALLY_TOPIC_MIN_INSYNC_REPLICAS": "2"})
    assert (chosen.replication_factor, chosen.min_insync_replicas) == (3, 2)


@pytest.mark.parametrize(("env", "needle"), [
    ({"TALLY_KAFKA_BROKERS": "3", "TALLY_BROKER": "tansu"}, "TALLY_KAFKA_BROKERS: a cluster of 3 nodes needs TALLY_BROKER=kafka"),
    ({"TALLY_TOPIC_REPLICATION_FACTOR": "3"}, "TALLY_TOPIC_REPLICATION_FACTOR: 3 replicas need as many brokers"),
    ({"TALLY_KAFKA_BROKERS": "3", "TALLY_TOPIC_MIN_INSYNC_REPLICAS": "4"}, "TALLY_TOPIC_MIN_INSYNC_REPLICAS: 4 is more than the 3 replicas"),
    ({"TALLY_KAFKA_BOOTSTRAP": "k:1", "TALLY_TOPIC_REPLICATION_FACTOR": "2", "TALLY_TOPIC_MIN_INSYNC_REPLICAS": "3"},
     "TALLY_TOPIC_MIN_INSYNC_REPLICAS: 3 is more than the 2 replicas"),
])
def test_replication_settings_that_cannot_work_are_refused(env, needle):
    with pytest.raises(SettingsError, match=needle):
        Settings.from_env(env)


def test_bad_value_stops_the_cli_with_one_line():
    proc = subprocess.run([sys.executable, "-m", "tally.ops", "up"], capture_output=True, text=True,
                          env={"TALLY_COLLECTOR_PORT": "eighty", "PATH": "/usr/bin:/bin"}, timeout=60)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "TALLY_COLLECTOR_PORT" in lines[0] and "eighty" in lines[0]


def test_configuration_doc_is_current():
    doc = (REPO / "docs" / "configuration.md").read_text()
    assert doc == configuration_markdown(), "docs/configuration.md is stale: run `tally config docs`"


def test_the_dedup_window_is_at_most_the_lateness():
    assert Settings.from_env({}).dedup_window_seconds == 6 * 3600
    assert Settings.from_env({"TALLY_DEDUP_WINDOW_SECONDS": str(48 * 3600)}).dedup_window_seconds == 48 * 3600
    with pytest.raises(SettingsError, match="TALLY_DEDUP_WINDOW_SECONDS: 7200 is longer than"):
        Settings.from_env({"TALLY_DEDUP_WINDOW_SECONDS": "7200", "TALLY_ALLOWED_LATENESS_HOURS": "1"})
    with pytest.raises(SettingsError, match="TALLY_DEDUP_WINDOW_SECONDS"):
        Settings.from_env({"TALLY_DEDUP_WINDOW_SECONDS": "-1"})
    # Left at its default, a shorter lateness caps it.
    from tally.streams.stages import Clock

    clock = Clock(Settings.from_env({"TALLY_ALLOWED_LATENESS_HOURS": "2"}))
    assert clock.dedup_ms == 2 * 3600_000
