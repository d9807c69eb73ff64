"""Rows ClickHouse refuses, in any table, reach the dead letter after bounded retries: the
sink isolates the refused records (bad-rows, `warehouse_refused`), stores the rest, and
keeps consuming. The refusal is ClickHouse's own: a CHECK constraint on the real tables."""

from __future__ import annotations

import subprocess
import sys
import uuid

import pytest
from tally.ops.stack import http_ok

from tests.conftest import REPO, wait_for
from tests.helpers import query_rows
from tests.sink_records import Records, pageview, recent_days

pytestmark = pytest.mark.integration

PREPARE = """
from tally.config import Settings
from tally.sinks.migrate import migrate
from tally.sinks.warehouse import connect
s = Settings.from_env()
c = connect(s)
migrate(c, s)
c.command("ALTER TABLE drops ADD CONSTRAINT no_refuse CHECK site != 'refuse.test'")
c.command("ALTER TABLE pageviews ADD CONSTRAINT no_refuse CHECK path != '/refuse'")
"""


def test_refused_rows_go_to_the_dead_letter_and_the_rest_is_stored(tally_env, spawn):
    s = tally_env.settings
    subprocess.run([sys.executable, "-c", PREPARE], cwd=REPO, env=tally_env.child_env(), check=True, timeout=120)
    days = recent_days(2)
    rec = Records(s, partitions=4)
    rec.drop("a.test", days[0], "bot", 3)
    rec.drop("refuse.test", days[0], "bot", 100)  # decodes fine; ClickHouse refuses its row
    rec.drop("b.test", days[1], "datacenter", 2)
    rec.pageviews(200, days)
    refused = rec.codec.encode("pageview_batch", {"source_partition": 0, "source_offset": 999, "items": [
        pageview(str(uuid.uuid4()), 1_700_000_000_000, "a.test", "/refuse", 1)]})
    rec.produce("pageviews.enriched", refused, partition=2)
    rec.flush()

    sink = spawn(tally_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")
    try:
        wait_for(lambda: query_rows(s, "SELECT count() FROM bad_rows")[0][0] == 2, 120, "dead letters")
    except AssertionError:
        print(sink.output()[-5000:])
        raise
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] == 200, 60, "pageviews")
    assert query_rows(s, "SELECT reason, component, source_topic FROM bad_rows ORDER BY source_topic") == [
        ["warehouse_refused", "sink", s.topic("drops")], ["warehouse_refused", "sink", s.topic("pageviews.enriched")]]
    assert query_rows(s, "SELECT site, sum(count) FROM drops GROUP BY site ORDER BY site") == [
        ["a.test", 3], ["b.test", 2]]
    assert query_rows(s, "SELECT count() FROM pageviews WHERE path = '/refuse'")[0][0] == 0

    # Not paused for good: what comes next is stored.
    rec.drop("c.test", days[0], "bot", 7)
    rec.flush()
    wait_for(lambda: query_rows(s, "SELECT sum(count) FROM drops WHERE site = 'c.test'")[0][0] == 7, 60, "later rows")
    assert sink.alive()
    assert "isolating the refused records" in sink.output()
