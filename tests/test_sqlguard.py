"""The SQL guard and the analyst limits on the real engine (chDB in this process).

Each escape an outsider would try on chDB 26.9 is refused before it runs, with a
message naming what was refused; analyst SQL still works; and the engine cuts off
queries that run too long, use too much memory, or read or return too much. The
same paths through the running sink's socket and `tally query` are in
test_analyst_access.py."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tally.sinks.migrate import migrate
from tally.sinks.query import AnalystSession, QueryError
from tally.sinks.warehouse import connect

from tally.config import Settings

pytestmark = pytest.mark.integration

SECRET = Path("/etc/hostname")


@pytest.fixture(scope="module")
def warehouse(tmp_path_factory):
    state = tmp_path_factory.mktemp("guard")
    s = Settings.from_env({"TALLY_STATE_DIR": str(state), "TALLY_ANALYST_MAX_SECONDS": "2",
                           "TALLY_ANALYST_MAX_MEMORY_MB": "64", "TALLY_ANALYST_MAX_ROWS_TO_READ": "5000000",
                           "TALLY_ANALYST_MAX_RESULT_ROWS": "1000", "TALLY_ANALYST_MAX_RESULT_MB": "1"})
    writer = connect(s)
    migrate(writer, s)
    writer.command("INSERT INTO pageviews (event_id, received_at, site, path, event, visitor_id) "
                   "SELECT generateUUIDv4(number), now64(3) - toIntervalSecond(number), 'a.test', "
                   "concat('/p/', toString(number % 7)), 'pageview', number % 50 FROM numbers(500)")
    session = AnalystSession(s)
    yield s, session, state
    session.close()
    writer.close()


def run(warehouse, sql: str, params: dict | None = None) -> bytes:
    return warehouse[1].run(sql, "JSONCompact", params)


def refused(warehouse, sql: str, params: dict | None = None) -> str:
    with pytest.raises(QueryError) as info:
        run(warehouse, sql, params)
    assert info.value.refused, str(info.value)
    return str(info.value)


ESCAPES = [
    # files, read by the scalar function (not covered by readonly = 1) and its variants
    ("SELECT file('/etc/hostname')", "`file`"),
    ("SELECT FILE('/etc/hostname')", "`FILE`"),
    ('SELECT "file"(\'/etc/hostname\')', "`file`"),
    ("SELECT arrayMap(x -> file(x), ['/etc/hostname'])", "`file`"),
    ("SELECT * FROM file('/etc/hostname', 'LineAsString')", "table function `file`"),
    ("DESCRIBE file('/etc/hostname')", "table function `file`"),
    ("EXPLAIN SYNTAX SELECT file('/etc/hostname')", "`file`"),
    # other sources outside the warehouse
    ("SELECT * FROM url('http://127.0.0.1:9/', CSV, 'a String')", "table function `url`"),
    ("SELECT * FROM s3('http://127.0.0.1:9/x.csv')", "table function `s3`"),
    ("SELECT * FROM hdfs('hdfs://127.0.0.1:9/x', CSV, 'a String')", "table function `hdfs`"),
    ("SELECT * FROM remote('127.0.0.1:9', default.pageviews)", "table function `remote`"),
    ("SELECT * FROM remoteSecure('127.0.0.1:9', default.pageviews)", "table function `remoteSecure`"),
    ("SELECT * FROM cluster('default', default.pageviews)", "table function `cluster`"),
    ("SELECT * FROM input('a String')", "table function `input`"),
    ("SELECT * FROM executable('id', TabSeparated, 'a String')", "table function `executable`"),
    ("SELECT * FROM Python(secret)", "table function `Python`"),
    ("SELECT * FROM merge('default', '^api')", "table function `merge`"),
    ("SELECT dictGet('d', 'a', toUInt64(1))", "`dictGet`"),
    ("SELECT dictGetOrDefault('d', 'a', toUInt64(1), 'x')", "`dictGetOrDefault`"),
    ("SELECT * FROM dictionary('d')", "table function `dictionary`"),
    # writing files
    ("SELECT * FROM pageviews INTO OUTFILE '{out}' TRUNCATE", "INTO OUTFILE"),
    ("SELECT * FROM pageviews INTO OUTFILE '{out}' APPEND", "INTO OUTFILE"),
    ("SELECT 1 UNION ALL SELECT 2 INTO OUTFILE '{out}' AND STDOUT", "INTO OUTFILE"),
    # loosening the limits
    ("SELECT count() FROM pageviews SETTINGS max_execution_time = 0", "SETTINGS"),
    ("SELECT count() FROM pageviews SETTINGS readonly = 0", "SETTINGS"),
    ("SET max_memory_usage = 0", "this is Set)"),
    # users, grants, server files, and the keys table
    ("SELECT * FROM system.users", "`system.users` is not an analyst table"),
    ("SELECT * FROM system.grants", "`system.grants`"),
    ("SELECT * FROM system.disks", "`system.disks`"),
    ("SELECT * FROM system.tables", "`system.tables`"),
    ("SELECT name, path FROM system.parts", "`system.parts`"),
    ("SELECT * FROM information_schema.tables", "`information_schema.tables`"),
    ("SHOW GRANTS", "this is ShowGrants)"),
    ("SHOW USERS", "this is SHOW USERS)"),
    ("SELECT * FROM api_keys", "`api_keys` is not an analyst table"),
    ("SELECT * FROM default.api_keys", "`default.api_keys`"),
    ("SELECT key_hash FROM api_keys AS k", "`api_keys`"),
    ("SELECT 1 WHERE 'x' IN api_keys", "IN api_keys"),
    ("SHOW CREATE TABLE api_keys", "`api_keys`"),
    ("DESCRIBE TABLE api_keys", "`api_keys`"),
    ("SELECT * FROM tally_migrations", "`tally_migrations`"),
    # one statement, a value-typed parameter, plain names
    ("SELECT 1; SELECT file('/etc/hostname')", "Multi-statements"),
    ("SELECT 1; DROP TABLE pageviews", "Multi-statements"),
    ("DROP TABLE pageviews", "this is Drop)"),
    ("INSERT INTO drops (site, day, reason, component, count) VALUES ('x', today(), 'bot', 'sink', 1)", "this is Insert)"),
    ("SELECT * FROM `pageviews\n Literal`", "escaped characters"),
    ("SELECT 1 AS `a\nFunction file`", "escaped characters"),
    ("SELECT 1 FORMAT TabSeparated", "FORMAT"),
]


@pytest.mark.parametrize("sql, why", ESCAPES, ids=[e[0][:60] for e in ESCAPES])
def test_escape_vectors_are_refused(warehouse, sql, why):
    out = warehouse[2] / "escape.out"
    message = refused(warehouse, sql.replace("{out}", str(out)))
    assert why in message, message
    assert not out.exists()


def test_a_parameter_cannot_name_a_table(warehouse):
    message = refused(warehouse, "SELECT * FROM {t:Identifier}", {"t": "api_keys"})
    assert "only value types" in message
    assert "has no value" in refused(warehouse, "SELECT {x:String}")


def test_refusals_leak_nothing_of_the_file(warehouse):
    secret = SECRET.read_text().strip()
    for sql in ("SELECT file('/etc/hostname')", "SELECT 1; SELECT file('/etc/hostname')",
                "SELECT * FROM file('/etc/hostname', 'LineAsString')"):
        assert secret not in refused(warehouse, sql)


ALLOWED = [
    "SELECT count() FROM pageviews",
    "SELECT path, count() AS n FROM pageviews FINAL WHERE site = 'a.test' GROUP BY path ORDER BY n DESC LIMIT 3",
    "WITH recent AS (SELECT * FROM pageviews WHERE received_at > now() - INTERVAL 1 DAY) SELECT count() FROM recent",
    "SELECT * FROM top_pages_raw(site = 'a.test', date_from = '2020-01-01', date_to = '2099-01-01') LIMIT 2",
    "SELECT day, pageviews FROM site_stats_daily WHERE site = 'a.test'",
    "SELECT * FROM adoption_summary(date_from = '2020-01-01', date_to = '2099-01-01')",
    "SELECT number FROM system.numbers LIMIT 3",
    "SELECT * FROM numbers(3)",
    "SELECT 1 WHERE 1 IN (SELECT 1)",
    "SHOW TABLES",
    "SHOW CREATE TABLE pageviews",
    "DESCRIBE TABLE pageviews",
    "EXPLAIN SELECT count() FROM pageviews",
]


@pytest.mark.parametrize("sql", ALLOWED)
def test_analyst_sql_still_works(warehouse, sql):
    assert run(warehouse, sql).startswith(b"{")


def test_parameters_and_the_engine_rendering(warehouse):
    sql = "SELECT count() FROM pageviews WHERE site = {s:String} AND visitor_id < {n:UInt32}"
    assert json.loads(run(warehouse, sql, {"s": "a.test", "n": 10}))["data"] == [[100]]  # 10 of 50 visitors
    # the cached verdict of a shape holds for other values of the same types
    assert json.loads(run(warehouse, sql, {"s": "b.test", "n": 10}))["data"] == [[0]]


@pytest.mark.parametrize("sql, limit", [
    ("SELECT sleep(3)", "Timeout exceeded"),
    ("SELECT count() FROM numbers_mt(100000000000)", "max_rows_to_read"),
    ("SELECT count() FROM system.numbers", "(TOO_MANY_ROWS)"),
    ("SELECT arrayMap(x -> repeat('a', 1000), range(1000000))", "memory limit exceeded"),
    ("SELECT number FROM numbers(5000)", "Limit for result exceeded"),
])
def test_engine_limits_cut_heavy_queries(warehouse, sql, limit):
    with pytest.raises(QueryError) as info:
        run(warehouse, sql)
    assert not info.value.refused and limit.lower() in str(info.value).lower(), str(info.value)
    # the session is unharmed: the next query answers
    assert run(warehouse, "SELECT 1").startswith(b"{")


def test_a_session_keeps_its_limits(warehouse):
    reader = connect(warehouse[0], readonly=True)
    with pytest.raises(Exception, match="(?i)readonly"):
        reader.command("SET max_execution_time = 0")
    assert reader.query("SELECT getSetting('max_execution_time'), getSetting('readonly')").result_rows == [(2, 1)]
    reader.close()


def test_every_table_is_either_for_analysts_or_private(warehouse):
    """A new table or view must be placed on one list or the other (sinks/analyst.py)."""
    from tally.sinks.analyst import ANALYST_TABLES, ANALYST_VIEWS, PRIVATE_TABLES

    writer = connect(warehouse[0])
    try:
        names = {r[0] for r in writer.query("SELECT name FROM system.tables WHERE database = currentDatabase()").result_rows}
    finally:
        writer.close()
    assert names == ANALYST_TABLES | ANALYST_VIEWS | PRIVATE_TABLES
