"""Topic settings that bound how long personal data and keys live on disk (issue #15), and
their reconciliation on topics that already exist."""

from __future__ import annotations

from dataclasses import replace

import pytest
from confluent_kafka import KafkaException

from tally.topics import (
    BAD_ROWS,
    BEACONS_RAW,
    DAY_MS,
    EDGE_KEYS,
    PAGEVIEWS_ENRICHED,
    PRODUCT_EVENTS,
    SALTS,
    describe_config,
    ensure_topics,
)
from tests.conftest import wait_for

pytestmark = pytest.mark.integration


def test_personal_data_topics_roll_daily_and_raw_beacons_live_no_longer_than_the_keys(tally_env):
    s = tally_env.settings
    for name in (BEACONS_RAW, PAGEVIEWS_ENRICHED, PRODUCT_EVENTS, BAD_ROWS):
        assert int(describe_config(s, name)["segment.ms"]) <= DAY_MS, name
    assert int(describe_config(s, BEACONS_RAW)["retention.ms"]) == s.salt_grace_hours * 3600_000
    for name in (PAGEVIEWS_ENRICHED, PRODUCT_EVENTS):  # docs/privacy.md: 7 days
        assert int(describe_config(s, name)["retention.ms"]) == 7 * DAY_MS, name
    assert int(describe_config(s, BAD_ROWS)["retention.ms"]) == s.bad_rows_retention_days * DAY_MS == 7 * DAY_MS
    for name in (SALTS, EDGE_KEYS):
        config = describe_config(s, name)
        assert config["cleanup.policy"] == "compact" and config["message.timestamp.type"] == "LogAppendTime"
        shred_ms = s.key_shred_seconds * 1000  # TALLY_KEY_SHRED_SECONDS, an hour by default
        assert shred_ms == 3600_000
        for key in ("segment.ms", "delete.retention.ms", "max.compaction.lag.ms"):
            assert int(config[key]) == shred_ms, key
        assert int(config["file.delete.delay.ms"]) <= 60_000


def test_a_changed_setting_reaches_existing_topics(tally_env):
    s = tally_env.settings
    shorter = replace(s, salt_grace_hours=24, bad_rows_retention_days=3)
    assert ensure_topics(shorter).created == []  # nothing new to create ...
    # ... but reconciled (the broker applies an altered config a moment after it acknowledged it)
    def reconciled() -> bool:
        try:
            return (int(describe_config(s, BEACONS_RAW)["retention.ms"]) == 24 * 3600_000
                    and int(describe_config(s, BAD_ROWS)["retention.ms"]) == 3 * DAY_MS)
        except KafkaException:  # KRaft: the broker's metadata catches up with the controller's
            return False

    wait_for(reconciled, 30, "the new retentions")
    assert ensure_topics(shorter).created == [] and describe_config(s, SALTS)["cleanup.policy"] == "compact"
