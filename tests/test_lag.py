"""`tally status` asks for the consumer groups in a child process: librdkafka's group admin
calls can abort the process when a broker dies mid-request (librdkafka#4605)."""

from __future__ import annotations

import os

from tally.ops import lag

from tally.config import Settings


def _abort(settings: Settings) -> list:
    os.abort()  # what librdkafka's failed assertion does


def test_groups_are_unknown_when_the_kafka_client_aborts(monkeypatch, tmp_path):
    monkeypatch.setattr(lag, "_stack_groups", _abort)
    settings = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": "127.0.0.1:9", "TALLY_STATE_DIR": str(tmp_path)})
    reports = lag.stack_groups(settings, timeout=120)
    assert [r.group for r in reports] == lag.groups(settings)
    assert {r.state for r in reports} == {"unknown (the Kafka admin client aborted)"}
