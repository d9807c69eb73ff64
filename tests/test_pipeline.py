"""The walking skeleton end to end: HTTP beacon -> Kafka -> Faust worker -> Kafka -> sink -> chDB."""

from __future__ import annotations

import pytest
from tally.ops.stack import http_ok

from tests.conftest import free_port, start_pipeline, wait_for
from tests.helpers import BROWSER_UA, collect_url, post_json, query_rows

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


def test_a_multi_host_bootstrap_list_works_in_every_component(tally_env, spawn):
    """host:port,host:port reaches librdkafka (collector, sink), aiokafka through Faust (worker)
    and the readiness checks; the first host listed is dead, so each must try the next."""
    dead = f"127.0.0.1:{free_port()}"
    tally_env.vars["TALLY_KAFKA_BOOTSTRAP"] = f"{dead},{tally_env.vars['TALLY_KAFKA_BOOTSTRAP']}"
    s = tally_env.settings
    assert s.bootstrap_hosts[0] == dead and len(s.bootstrap_hosts) == 2
    procs = start_pipeline(tally_env, spawn)
    status, body, _ = post_json(collect_url(s), {"site": "example.com", "path": "/two-hosts"},
                                headers={"User-Agent": BROWSER_UA})
    assert status == 204, body
    wait_for(lambda: query_rows(s, "SELECT count() FROM pageviews WHERE path = '/two-hosts'")[0][0] == 1,
             60, "the pageview in ClickHouse")
    for p in procs:
        assert p.alive(), p.output()[-2000:]
