"""Sessions through the real worker on the real broker, with a scripted clock: the worker's
clock is shifted (TALLY_CLOCK_OFFSET_SECONDS) to a fixed instant, and the events carry
scripted times around it."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from tally.ops.stack import worker_ready

from tests.conftest import wait_for
from tests.stream_support import beacon, expected_aggregates, latest_aggregates, produce_batches

pytestmark = pytest.mark.integration

NOW = datetime(2030, 1, 1, 6, 0, tzinfo=UTC)  # the worker's clock
NOON = datetime(2029, 12, 31, 12, 0, tzinfo=UTC)
MIN = timedelta(minutes=1)


def _ms(dt: datetime) -> int:
    return int(dt.timestamp() * 1000)


def _script() -> tuple[list[list[dict]], list[dict]]:
    """(batches before the worker starts, one late batch after): visitors A to E."""
    a = [beacon(ip="ip-a", path=f"/a{i}", received_at=NOON + 5 * i * MIN) for i in range(3)]
    b = [beacon(ip="ip-b", path="/b", received_at=NOON)]
    c = [beacon(ip="ip-c", path="/c1", received_at=NOON), beacon(ip="ip-c", path="/c2", received_at=NOON + 40 * MIN)]
    midnight = datetime(2030, 1, 1, tzinfo=UTC)
    d = [beacon(ip="ip-d", path="/d1", received_at=midnight - 10 * MIN),
         beacon(ip="ip-d", path="/d2", received_at=midnight + 10 * MIN)]
    # E: two visits 40 minutes apart, then an event between them arrives: one visit
    e = [beacon(ip="ip-e", path="/e1", received_at=NOON), beacon(ip="ip-e", path="/e3", received_at=NOON + 40 * MIN)]
    e_late = [beacon(ip="ip-e", path="/e2", received_at=NOON + 20 * MIN, event="signup")]
    # out of order on purpose: C's second pageview and A's last come first
    return [[c[1], a[2]], a[:2] + b + [c[0]], d, e], e_late


def _run(tally_env, spawn, *others: str) -> tuple[list[dict], object]:
    tally_env.vars["TALLY_CLOCK_OFFSET_SECONDS"] = str(int((NOW - datetime.now(UTC)).total_seconds()))
    s = tally_env.settings
    first, late = _script()
    produce_batches(s, first, partition=0)
    worker = spawn(tally_env, "worker")
    for name in others:
        spawn(tally_env, name)
    wait_for(lambda: worker_ready(s), 90, "worker in its consumer group")
    produce_batches(s, [late], partition=1)
    return [b for batch in first for b in batch] + late, worker


def test_visits_bounces_durations_and_the_period_boundary(tally_env, spawn):
    everything, worker = _run(tally_env, spawn)
    s = tally_env.settings
    midnight = datetime(2030, 1, 1, tzinfo=UTC)
    expected = expected_aggregates(everything)
    wait_for(lambda: latest_aggregates(s) == expected, 90, "the aggregates of every event, sessions included")
    got = latest_aggregates(s)
    hour = _ms(NOON)
    assert got[("visits_hour", "example.com", "", hour)] == (5, 0)  # A, B, C's first and second, E
    assert got[("bounces_hour", "example.com", "", hour)] == (3, 0)  # B and C's two (E has an event)
    assert got[("visit_duration_hour", "example.com", "", hour)] == (10 * 60_000 + 40 * 60_000, 0)  # A + E
    day = _ms(NOON.replace(hour=0))
    assert got[("entry_page_day", "example.com", "/a0", day)] == (1, 0)
    assert got[("exit_page_day", "example.com", "/a2", day)] == (1, 0)
    assert got[("exit_page_day", "example.com", "/e3", day)] == (1, 0)
    # D's session crossing midnight is split: one bounce in 23:00 of one day, one in 00:00 of the next
    assert got[("visits_hour", "example.com", "", _ms(midnight - 10 * MIN) // 3600_000 * 3600_000)] == (1, 0)
    assert got[("visits_hour", "example.com", "", _ms(midnight))] == (1, 0)
    assert got[("bounces_hour", "example.com", "", _ms(midnight))] == (1, 0)
    assert worker.alive(), worker.output()[-3000:]


def test_the_sessions_table_holds_each_visit_once_in_its_latest_state(tally_env, spawn):
    from tally.ops.stack import http_ok

    from tests.helpers import query_rows

    _run(tally_env, spawn, "sink")
    s = tally_env.settings
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    sql = ("SELECT entry_page, exit_page, pageviews, events, duration_ms, bounce, referrer_source, browser "
           "FROM sessions FINAL ORDER BY entry_page")
    want = [["/a0", "/a2", 3, 3, 600_000, 0], ["/b", "/b", 1, 1, 0, 1], ["/c1", "/c1", 1, 1, 0, 1],
            ["/c2", "/c2", 1, 1, 0, 1], ["/d1", "/d1", 1, 1, 0, 1], ["/d2", "/d2", 1, 1, 0, 1],
            ["/e1", "/e3", 2, 3, 2_400_000, 0]]  # E's two visits merged by the late event: one row

    def rows():
        return [[r[0], r[1], int(r[2]), int(r[3]), int(r[4]), int(r[5])] for r in query_rows(s, sql)]

    wait_for(lambda: rows() == want, 90, f"the sessions table to hold {want}")
    assert {tuple(r[6:]) for r in query_rows(s, sql)} == {("direct", "Firefox")}
    daily = query_rows(s, "SELECT day, visits, bounces, bounce_rate FROM session_stats_daily "
                          "WHERE site = 'example.com' ORDER BY day")
    assert [[str(r[0]), int(r[1]), int(r[2])] for r in daily] == [["2029-12-31", 6, 4], ["2030-01-01", 1, 1]]
    entries = query_rows(s, "SELECT path, visits FROM entry_pages_daily WHERE day = '2029-12-31' ORDER BY path")
    assert [[r[0], int(r[1])] for r in entries] == [["/a0", 1], ["/b", 1], ["/c1", 1], ["/c2", 1], ["/d1", 1],
                                                    ["/e1", 1]]
    # tally reconcile sessionises the raw rows itself and finds the same visits, bounces, durations
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    out = subprocess.run([sys.executable, "-m", "tally.ops", "reconcile", "--from", "2029-12-31", "--to", "2030-01-01",
                          "--json"], cwd=REPO, env=tally_env.child_env(), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert json.loads(out.stdout)["days"] == 2
