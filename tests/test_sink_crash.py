"""A sink killed with SIGKILL between its insert and its offset commit, three times in a
row, then restarted: no row is lost and none is stored twice (count() without FINAL
equals the distinct event_ids sent; drop counters, which a duplicate would inflate,
add up exactly), and reconcile is clean."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
from tally.ops.stack import http_ok

from tests.conftest import REPO, Env, wait_for
from tests.helpers import query_rows
from tests.sink_records import Records, recent_days

pytestmark = pytest.mark.integration


def test_kill_between_insert_and_commit_leaves_no_duplicate(tally_env, spawn):
    s = tally_env.settings
    rec = Records(s, partitions=4)
    days = recent_days(2)
    crashing = Env({**tally_env.vars, "TALLY_TEST_SINK_CRASH_AFTER_INSERT": "1"})
    for attempt in range(3):
        rec.pageviews(400, days)
        rec.drop("a.test", days[0], "bot", 5 + attempt)
        rec.flush()
        proc = spawn(crashing, "sink", name=f"sink-crash-{attempt}")
        wait_for(lambda p=proc: not p.alive(), 120, "the sink to kill itself after an insert")
        out = proc.output()
        assert proc.popen.returncode == -9, out[-3000:]
        assert "killing the sink between insert and commit" in out
        if attempt:
            assert "replaying an unfinished batch" in out, out[-3000:]

    # The rows of the killed batches are in ClickHouse although no offset was committed.
    inserted = query_rows(s, "SELECT count() FROM pageviews")[0][0]
    assert inserted > 0

    rec.aggregates_from_sent()
    rec.flush()
    sink = spawn(tally_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    expected = len(rec.sent.event_ids)

    def settled() -> bool:
        rows = query_rows(s, "SELECT (SELECT count() FROM pageviews), (SELECT sum(count) FROM drops), "
                             "(SELECT count() FROM aggregates)")[0]
        return int(rows[0]) >= expected and int(rows[1]) >= rec.sent.drops and int(rows[2]) > 0

    wait_for(settled, 60, f"{expected} pageviews")
    time.sleep(2)  # anything replayed twice would have arrived by now
    count, distinct = query_rows(s, "SELECT count(), uniqExact(event_id) FROM pageviews")[0]
    assert (count, distinct) == (expected, expected)
    assert int(query_rows(s, "SELECT sum(count) FROM drops")[0][0]) == rec.sent.drops == 5 + 6 + 7
    lo, hi = str(days[-1]), str(days[0])
    out = subprocess.run([sys.executable, "-m", "tally.ops", "reconcile", "--from", lo, "--to", hi, "--json"],
                         cwd=REPO, env=tally_env.child_env(), capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert sink.alive(), sink.output()[-3000:]


def test_timed_kills_while_traffic_flows(tally_env, spawn):
    """SIGKILL at arbitrary moments (not only between insert and commit) while records
    keep arriving, three times; after the last restart every event is stored once."""
    import random

    s = tally_env.settings
    rec = Records(s, partitions=4)
    days = recent_days(1)
    rnd = random.Random(11)
    for attempt in range(3):
        proc = spawn(tally_env, "sink", name=f"sink-timed-{attempt}")
        wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
        deadline = time.monotonic() + 4 + rnd.random() * 4
        while time.monotonic() < deadline:
            rec.pageviews(100, days, per_batch=10)
            rec.drop("a.test", days[0], "bot", 1)
            rec.flush()
            time.sleep(0.1)
        proc.stop(sig=9)
        assert proc.popen.returncode == -9
    sink = spawn(tally_env, "sink")
    expected = len(rec.sent.event_ids)
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] >= expected
             and int(query_rows(s, "SELECT sum(count) FROM drops")[0][0] or 0) >= rec.sent.drops, 90, "all rows")
    time.sleep(2)
    assert query_rows(s, "SELECT count(), uniqExact(event_id) FROM pageviews")[0] == [expected, expected]
    assert int(query_rows(s, "SELECT sum(count) FROM drops")[0][0]) == rec.sent.drops
    assert sink.alive()
