"""Salts on a real broker: one salt per period under races, rotation, deletion after the grace window."""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import pytest
from tally.streams.salts import SaltKeeper, period_key

from tally.topics import describe_config
from tests.conftest import wait_for
from tests.stream_support import beacon, decoded, produce_batches, read_all

pytestmark = pytest.mark.integration


def live_keys(settings) -> dict[str, bytes]:
    """What compaction would leave: the last value per key, tombstones removed."""
    last: dict[str, bytes | None] = {}
    for m in read_all(settings, "salts"):
        last[m.key().decode()] = m.value()
    return {k: v for k, v in last.items() if v is not None}


def test_racing_keepers_agree_on_one_salt(tally_env):
    s = tally_env.settings
    keepers = [SaltKeeper(s) for _ in range(4)]
    results: list[bytes | None] = [None] * len(keepers)
    go = threading.Barrier(len(keepers))

    def ask(i: int) -> None:
        go.wait()
        results[i] = keepers[i].salt(period_key(datetime.now(UTC), "day"))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(keepers))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert results[0] is not None and len(results[0]) == 32
    assert all(r == results[0] for r in results)
    wait_for(lambda: len(live_keys(s)) == 1, 30, "losers to withdraw their proposals")
    assert list(live_keys(s).values()) == [results[0]]
    late = SaltKeeper(s)  # a worker starting later reads the same salt
    assert late.salt(period_key(datetime.now(UTC), "day")) == results[0]
    for k in keepers + [late]:
        k.close()


def test_two_workers_started_together_hash_with_one_salt(tally_env, spawn):
    s = tally_env.settings
    produce_batches(s, [[beacon(ip="same-visitor", path=f"/{i}")] for i in range(4)] * 3)
    for p in range(4):  # every input partition, so both workers need today's salt
        produce_batches(s, [[beacon(ip="same-visitor", path=f"/p{p}")]], partition=p)
    spawn(tally_env, "worker", name="w1")
    spawn(tally_env, "worker", name="w2")
    # Distinct input records, not output items: two workers starting together rebalance, and a
    # record one handled before its partition moved may be handled again (at least once; the
    # window stage skips the repeat), so a count of items can pass 16 and never equal it.
    wait_for(lambda: len({(b["source_partition"], b["source_offset"], i)
                          for b in decoded(s, "pageviews.enriched", "pageview_batch")
                          for i in range(len(b["items"]))}) == 16, 120, "16 pageviews")
    visitors = {pv["visitor_id"] for b in decoded(s, "pageviews.enriched", "pageview_batch") for pv in b["items"]}
    assert len(visitors) == 1
    today = period_key(datetime.now(UTC), "day")
    wait_for(lambda: [k.split(":")[0] for k in live_keys(s)] == [today], 30, "exactly one live salt")


def test_a_keeper_whose_clock_runs_72_hours_ahead_never_tombstones_the_live_salt(tally_env):
    s = tally_env.settings
    today = period_key(datetime.now(UTC), "day")
    keeper = SaltKeeper(s)
    salt = keeper.salt(today)
    assert salt is not None
    ahead = SaltKeeper(s, clock=lambda: datetime.now(UTC) + timedelta(hours=72))  # a wrong system clock
    assert ahead.salt(today) is None  # by its own clock today is over: it hashes nothing with it
    assert ahead.expire() == []  # but the broker's clock says today is live: nothing destroyed
    assert today in ahead.known_periods()
    assert live_keys(s)[f"{today}:{keeper.proposer}"] == salt
    late = SaltKeeper(s)  # a worker with the right clock still gets the same salt
    assert late.salt(today) == salt
    for k in (keeper, ahead, late):
        k.close()


def test_old_salt_is_tombstoned_after_the_grace_window(tally_env, spawn):
    s = tally_env.settings
    now = datetime.now(UTC)
    today = period_key(now, "day")
    keeper = SaltKeeper(s)
    salt = keeper.salt(today)
    assert salt is not None
    keeper.close()

    # Three days later (past the end of today + 48 h grace) for the keeper and, through the
    # test hook TALLY_CLOCK_OFFSET_SECONDS, for its reading of the broker's clock too.
    shifted = replace(s, clock_offset_seconds=3 * 86400)
    future = SaltKeeper(shifted)
    later = future.clock()
    assert future.salt(today) is None  # an expired period gets no salt, old or new
    assert today not in future.known_periods()
    new_salt = future.salt(period_key(later, "day"))
    assert new_salt is not None and new_salt != salt
    future.close()

    last = {}
    for m in read_all(s, "salts"):
        last[m.key().decode()] = m.value()
    assert [v for k, v in last.items() if k.startswith(today)] == [None]  # tombstoned
    assert salt not in live_keys(s).values()
    config = describe_config(s, "salts")
    assert config["cleanup.policy"] == "compact"
    assert int(config["delete.retention.ms"]) <= 3600_000  # compaction drops the tombstone soon

    # A worker whose clock is 3 days ahead never hashes today's events: too late, no salt.
    tally_env.vars["TALLY_CLOCK_OFFSET_SECONDS"] = str(3 * 86400)
    produce_batches(s, [[beacon(received_at=now)]])
    spawn(tally_env, "worker")
    wait_for(lambda: decoded(s, "bad-rows", "bad_row"), 90, "a bad row")
    assert [b["reason"] for b in decoded(s, "bad-rows", "bad_row")] == ["too_late"]
    assert decoded(s, "pageviews.enriched", "pageview_batch") == []
