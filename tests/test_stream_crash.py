"""Crash tests: the worker killed with SIGKILL, and the final aggregates equal a clean
recomputation from the input, sessions (visits, bounces, durations, entry and exit pages)
included.

- At random moments: 100,000 events, six kills, for several seeds of the kill timing.
- At the worst moment for the window totals: after the worker committed all its input and
  before its totals timer ran. The next owner of the partitions has no new input to
  process and must still re-emit every window (streams/state.py).
"""

from __future__ import annotations

import random
import re
import signal
import time

import pytest

from tests.conftest import wait_for
from tests.stream_support import (
    assert_converges,
    expected_aggregates,
    input_lag,
    latest_aggregates,
    produce_batches,
    traffic,
)

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]

EVENTS = 100_000
KILLS = 6
# Short sessions: each visitor's ~50 events over 5 minutes make several sessions, and events
# arriving out of order keep merging them, across kills and rebuilds.
SESSION_TIMEOUT = 10


@pytest.mark.parametrize("seed", [11, 23, 37])
def test_kill_9_at_random_moments_changes_no_number(tally_env, spawn, seed):
    tally_env.vars["TALLY_SESSION_TIMEOUT_SECONDS"] = str(SESSION_TIMEOUT)
    s = tally_env.settings
    batches = traffic(EVENTS, seed=seed)
    expected = expected_aggregates((b for batch in batches for b in batch), session_timeout_seconds=SESSION_TIMEOUT)
    assert sum(v[0] for k, v in expected.items() if k[0] == "visits_hour") > 5 * 2000  # several visits each
    rnd = random.Random(seed)
    chunks = [batches[i::KILLS] for i in range(KILLS)]
    restored: list[int] = []
    for kills, chunk in enumerate(chunks):
        produce_batches(s, chunk)  # more input arrives while the worker runs and dies
        worker = spawn(tally_env, "worker", name=f"worker-{kills}")
        # It logs once it rebuilt the state of its partitions (on assignment); then let it
        # count for a random while and kill it mid-stream.
        wait_for(lambda w=worker: "rebuilt from" in w.output(), 180, "worker holding partitions")
        time.sleep(rnd.uniform(0.2, 3.0))
        assert worker.alive(), worker.output()[-3000:]
        worker.stop(signal.SIGKILL)
        restored.extend(int(n) for n in re.findall(r"rebuilt from (\d+) changelog", worker.output()))
    # the recovery path really ran: some restart rebuilt its state from a non-empty changelog
    assert max(restored) > 0, restored

    final = spawn(tally_env, "worker", name="worker-final")
    print(f"seed {seed}: the final worker converged {assert_converges(s, expected, final):.1f}s after its start")
    got = latest_aggregates(s)
    assert sum(v[0] for k, v in got.items() if k[0] == "site_day") == EVENTS
    assert got.keys() >= {k for k in expected if k[0] in ("visits_hour", "bounces_hour", "entry_page_day")}
    assert final.alive(), final.output()[-3000:]


def test_a_worker_killed_after_its_commit_and_before_its_totals_loses_no_total(tally_env, spawn):
    s = tally_env.settings
    batches = traffic(20_000, seed=5)
    expected = expected_aggregates(b for batch in batches for b in batch)
    produce_batches(s, batches)
    # This worker would emit its totals only after an hour: it dies before it does.
    tally_env.vars["TALLY_TOTALS_FLUSH_SECONDS"] = "3600"
    first = spawn(tally_env, "worker", name="no-totals")
    inputs = {s.topic("beacons.raw"), s.topic("pageviews.enriched")}
    wait_for(lambda: (lag := input_lag(s)) is not None and inputs <= set(lag) and not any(lag.values()),
             180, "every input record processed and committed")
    first.stop(signal.SIGKILL)
    assert latest_aggregates(s) == {}, "precondition: the killed worker emitted no totals"

    del tally_env.vars["TALLY_TOTALS_FLUSH_SECONDS"]
    # A short stall limit: with nothing left to process, the watchdog must stay quiet.
    tally_env.vars["TALLY_WORKER_STALL_SECONDS"] = "20"
    final = spawn(tally_env, "worker", name="next-owner")
    print(f"the next owner converged {assert_converges(s, expected, final):.1f}s after its start")
    time.sleep(25)
    assert final.alive(), final.output()[-3000:]
