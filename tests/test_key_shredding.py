"""An expired key leaves the disk (issue #15 item 2): after its tombstone, the keeper's roll
records let the segment holding the key close, and the broker's log cleaner rewrites it
without the key, so no byte of the key is left in any file of the topic's log directory.

The keys topics roll hourly by default (tally/topics.py keys_config, TALLY_KEY_SHRED_SECONDS);
this test gives its topic the same settings with second-scale times so the cleaner's work
fits in a test."""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime

import pytest
from confluent_kafka.admin import NewTopic

from tally.periodkeys import PeriodKeys, period_key
from tally.topics import admin, keys_config
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_an_expired_key_leaves_every_segment_file(tally_env, broker):
    if broker.data_dir is None:
        pytest.skip("an external broker: its log files are not on this machine")
    s = replace(tally_env.settings, key_shred_seconds=1)
    topic = s.topic(f"keys-{uuid.uuid4().hex[:6]}")
    client = admin(s)
    new = NewTopic(topic, num_partitions=1, replication_factor=-1, config=keys_config(s))
    client.create_topics([new])[topic].result(30)
    log_dir = wait_for(lambda: list(broker.data_dir.rglob(f"{topic}-0")), 30, "the topic log dir")[0]
    today = period_key(datetime.now(UTC), s.salt_period)
    keeper = PeriodKeys(s, topic, f"shred-{uuid.uuid4().hex[:6]}")
    key = keeper.key(today)
    assert key is not None

    def files_with_key() -> list[str]:
        return [f.name for f in log_dir.iterdir() if f.is_file() and key in f.read_bytes()]

    wait_for(files_with_key, 30, "the key on disk")  # it was written (the scan can see it)
    later = PeriodKeys(replace(s, clock_offset_seconds=3 * 86400), topic, f"shred-{uuid.uuid4().hex[:6]}")
    assert later.expire() == [f"{today}:{keeper.proposer}"]

    def shredded() -> bool:
        later.expire()  # each pass appends a roll record while the tombstone is recent
        return not files_with_key()

    wait_for(shredded, 180, "the log cleaner to remove the key's bytes", interval=1.0)
    for k in (keeper, later):
        k.close()
