"""The whole pipeline with the real stream worker: HTTP beacons -> collector -> Kafka ->
worker (enrichment, window aggregates) -> sink -> chDB. Raw rows and aggregates come
out exact, the daily stats view equals the raw data, and reconcile is clean."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tests.conftest import start_pipeline, wait_for
from tests.helpers import collect_url, post_json, query_rows
from tests.test_api import reconciled

pytestmark = pytest.mark.integration

UAS = ["Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0",
       "Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0 Safari/537.36",
       "Mozilla/5.0 (Macintosh; Intel Mac OS X 14_5) AppleWebKit/605.1.15 (KHTML, like Gecko) Version/17.5 Safari/605.1.15"]


def test_beacons_to_rows_and_aggregates_reconcile(tally_env, spawn):
    s = tally_env.settings
    sink, worker, collector = start_pipeline(tally_env, spawn)

    for i in range(30):
        body = {"site": "example.com", "path": f"/docs/{i % 4}", "referrer": "https://www.google.com/"}
        if i % 10 == 9:
            body["event"] = "signup"  # a custom event: stored, not a pageview
        status, resp, _ = post_json(collect_url(s), body, headers={"User-Agent": UAS[i % 3]})
        assert status in (202, 204), resp

    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews")[0][0] == 30, 90, "30 raw rows")
    assert query_rows(s, "SELECT countIf(event = 'pageview'), uniqExact(visitor_id) FROM pageviews")[0] == [27, 3]
    today = datetime.now(UTC).date().isoformat()
    wait_for(lambda: query_rows(s, f"SELECT toUInt32(pageviews), toUInt32(visitors) FROM site_stats_daily "
                                   f"WHERE site = 'example.com' AND day = '{today}'") == [[27, 3]],
             60, "site_day aggregates equal to the raw rows")
    rec = reconciled(tally_env, "--from", today, "--to", today)
    assert rec["drift"] == [] and rec["days"] == 1, rec
    paths = query_rows(s, f"SELECT path, pageviews FROM top_pages(site = 'example.com', date_from = '{today}', "
                          f"date_to = '{today}') ORDER BY path")
    assert paths == query_rows(s, f"SELECT path, pageviews FROM top_pages_raw(site = 'example.com', "
                                  f"date_from = '{today}', date_to = '{today}') ORDER BY path")
    for p in (sink, worker, collector):
        assert p.alive(), p.output()[-2000:]
