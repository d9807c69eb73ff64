"""The walking skeleton end to end: HTTP beacon -> Kafka -> Faust worker -> Kafka -> sink -> chDB."""

from __future__ import annotations

import pytest
from tally.ops.stack import http_ok

from tests.conftest import start_pipeline, wait_for
from tests.helpers import collect_url, post_json, query_rows

pytestmark = pytest.mark.integration


def test_beacons_reach_clickhouse(tally_env, spawn):
    s = tally_env.settings
    sink, worker, collector = start_pipeline(tally_env, spawn)

    ua = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"
    for i in range(25):
        status, body, _ = post_json(collect_url(s), {"site": "example.com", "path": f"/p/{i % 5}?q=1",
                                                     "referrer": "https://www.google.com/"},
                                    headers={"User-Agent": ua})
        assert status == 204, body

    def rows():
        return query_rows(s, "SELECT count(), uniqExact(event_id), uniqExact(visitor_id), "
                             "groupUniqArray(path) FROM pageviews WHERE site = 'example.com'")

    wait_for(lambda: rows()[0][0] == 25, 60, "25 pageviews in ClickHouse")
    count, distinct_ids, visitors, paths = rows()[0]
    assert distinct_ids == 25
    assert visitors == 1  # same IP + UA + site + salt period -> one visitor
    assert sorted(paths) == [f"/p/{i}" for i in range(5)]  # query strings normalised away
    for p in (sink, worker, collector):
        assert p.alive(), p.output()[-2000:]


def test_rejected_site_is_400_naming_it(tally_env, spawn):
    s = tally_env.settings
    spawn(tally_env, "collector")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.collector_port}/healthz"), 30, "collector")
    status, body, _ = post_json(collect_url(s), {"site": "evil.test", "path": "/"})
    assert status == 400 and b"site" in body
    status, body, _ = post_json(collect_url(s), {"site": "example.com"})
    assert status == 400 and b"path" in body
