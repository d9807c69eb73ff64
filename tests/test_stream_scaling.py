"""Scaling test: one worker, a second joins mid-stream, then the first stops; counts stay exact."""

from __future__ import annotations

import pytest
from tally.ops.lag import group_report

from tally.topics import admin
from tests.conftest import wait_for
from tests.stream_support import expected_aggregates, latest_aggregates, produce_batches, traffic

pytestmark = pytest.mark.integration


def test_adding_and_removing_workers_changes_no_number(tally_env, spawn):
    s = tally_env.settings
    batches = traffic(30_000, seed=3)
    expected = expected_aggregates(b for batch in batches for b in batch)
    thirds = [batches[i::3] for i in range(3)]

    def drift():
        got = latest_aggregates(s)
        return {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}

    first = spawn(tally_env, "worker", name="first")
    produce_batches(s, thirds[0])
    wait_for(lambda: "rebuilt from" in first.output(), 90, "first worker counting")

    def both_hold_partitions() -> bool:
        try:
            group = group_report(admin(s), s.app_id)
        except Exception:
            return False
        return group.state == "stable" and len(group.members) == 2 and all(
            m["partitions"] for m in group.members)

    second = spawn(tally_env, "worker", name="second")
    # Produce only after the rebalance: otherwise the first worker may finish this third
    # before the second one owns anything, and the second never has work to show.
    wait_for(both_hold_partitions, 90, "second worker joined the group with partitions")
    produce_batches(s, thirds[1])
    wait_for(lambda: "rebuilt from" in second.output(), 90, "second worker given partitions")

    first.stop()  # graceful: SIGTERM, the group rebalances onto the second worker
    assert first.popen.returncode is not None
    produce_batches(s, thirds[2])
    wait_for(lambda: not drift(), 180, "aggregates equal to the clean recomputation", interval=2)
    assert second.alive(), second.output()[-3000:]
