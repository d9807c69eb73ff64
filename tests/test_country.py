"""Countries at the edge, end to end: beacons through a trusted proxy with client addresses
from known registry ranges get their country in the pageviews and sessions tables, and the
raw address is in no topic, no table, no log and no file."""

from __future__ import annotations

import json
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from tally.kafka import consumer_config
from tally.topics import admin
from tests.conftest import start_pipeline, wait_for
from tests.helpers import BROWSER_UA, collect_url, post_json, query_rows

pytestmark = pytest.mark.integration

# client address -> the country its registry block is assigned to ("" for documentation
# and private ranges). 8.8.8.8 is a datacenter address: dropped by the worker, yet its
# address must be nowhere either.
KNOWN = {"81.2.69.142": "GB", "1.0.16.1": "JP", "2a02:ff0::1": "TR", "89.160.20.112": "SE",
         "216.160.83.56": "US", "203.0.113.9": ""}
DATACENTER = "8.8.8.8"


def _every_topic_bytes(s) -> bytes:
    names = [t for t in admin(s).list_topics(timeout=10).topics if t.startswith(s.topic_prefix)]
    c = Consumer(consumer_config(s, f"scan-{uuid.uuid4().hex[:6]}", **{"enable.partition.eof": True}))
    out = []
    try:
        parts = []
        for name in names:
            meta = c.list_topics(name, timeout=10).topics[name]
            parts += [TopicPartition(name, p, 0) for p in meta.partitions]
        c.assign(parts)
        left = len(parts)
        while left:
            for m in c.consume(10000, 2.0):
                if m.error():
                    left -= m.error().code() == -191  # _PARTITION_EOF
                    continue
                out += [m.key() or b"", m.value() or b"", b"".join(v for _, v in m.headers() or [])]
    finally:
        c.close()
    return b"".join(out)


def test_country_through_a_trusted_proxy_and_the_address_nowhere(tally_env, spawn):
    tally_env.vars["TALLY_TRUSTED_PROXIES"] = "127.0.0.1/32"
    s = tally_env.settings
    procs = start_pipeline(tally_env, spawn)
    for i, ip in enumerate([*KNOWN, DATACENTER]):
        status, body, _ = post_json(collect_url(s), {"site": "example.com", "path": f"/c/{i}"},
                                    headers={"User-Agent": BROWSER_UA, "X-Forwarded-For": f"198.51.100.1, {ip}"})
        assert status == 204, body
    want = [[f"/c/{i}", country] for i, country in enumerate(KNOWN.values())]
    wait_for(lambda: query_rows(s, "SELECT path, country FROM pageviews FINAL ORDER BY path") == want, 90,
             f"pageviews with their countries {want}")
    sql = "SELECT entry_page, country FROM sessions FINAL ORDER BY entry_page"
    wait_for(lambda: query_rows(s, sql) == want, 60, "sessions with their entry pageview's country")

    today = datetime.now(UTC).date().isoformat()
    view = query_rows(s, f"SELECT country, pageviews, visits FROM top_countries(site = 'example.com', "
                         f"date_from = '{today}', date_to = '{today}') ORDER BY country")
    assert [[c, int(p), int(v)] for c, p, v in view] == [[c, 1, 1] for c in sorted(KNOWN.values())]

    addresses = [*KNOWN, DATACENTER, "198.51.100.1"]
    topics = _every_topic_bytes(s)
    assert b"/c/0" in topics  # the scan saw the records
    tables = json.dumps([query_rows(s, f"SELECT * FROM {t}")
                         for t in ("pageviews", "aggregates", "sessions", "drops", "bad_rows")])
    files = [f.read_bytes() for f in Path(s.state_dir).rglob("*") if f.is_file() and "clickhouse" not in f.parts]
    for ip in addresses:
        assert ip.encode() not in topics, ip
        assert ip not in tables, ip
        assert all(ip.encode() not in data for data in files), ip
        assert all(ip not in p.output() for p in procs), ip
