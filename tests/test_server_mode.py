"""Server mode (TALLY_CLICKHOUSE_URL) against a ClickHouse HTTP server: tests/chdb_http.py,
the real engine behind the HTTP interface (it has no users or grants, so the read-only
users' SQL is checked with the engine's parser, not executed).

Readers never use the sink's credentials: `tally query` needs the analyst user's URL and
runs the guard there too; the dashboard reads with its own user; keys are managed with
the operator's credentials."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.request

import pytest
from tally.ops.stack import http_ok
from tally.sinks.migrate import migrate
from tally.sinks.warehouse import connect

from tests.conftest import REPO, Env, free_port, wait_for

pytestmark = pytest.mark.integration


@pytest.fixture
def server(tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(REPO / "tests" / "chdb_http.py"), str(tmp_path / "data"), str(port)],
                            start_new_session=True)
    try:
        wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/ping"), 60, "ClickHouse HTTP server")
        yield port
    finally:
        proc.terminate()
        proc.wait(30)


def tally(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tally.ops", *args], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=120)


def test_readers_use_their_own_users_and_the_guard(server, tally_env, spawn):
    url = f"http://127.0.0.1:{server}"
    owner = {**tally_env.child_env(), "TALLY_CLICKHOUSE_URL": f"http://tally:sink-password@127.0.0.1:{server}"}
    readers = {**owner, "TALLY_ANALYST_CLICKHOUSE_URL": f"http://tally_analyst:analyst-pw@127.0.0.1:{server}",
               "TALLY_DASHBOARD_CLICKHOUSE_URL": f"http://tally_dashboard:dash-pw@127.0.0.1:{server}"}
    settings = Env({k: v for k, v in owner.items() if k.startswith("TALLY_")}).settings
    client = connect(settings)
    migrate(client, settings)
    client.command("INSERT INTO pageviews (event_id, received_at, site, path, event, visitor_id, device) "
                   "SELECT generateUUIDv4(number), now64(3), 'example.com', '/', 'pageview', number % 4, 'mobile' "
                   "FROM numbers(12)")
    client.close()

    res = tally(owner, "query", "SELECT count() FROM pageviews")
    assert res.returncode == 1 and "TALLY_ANALYST_CLICKHOUSE_URL" in res.stderr  # not with the sink's user
    res = tally(readers, "query", "SELECT count() FROM pageviews", "--format", "csv")
    assert res.returncode == 0 and res.stdout.splitlines()[1] == "12", res.stderr
    for text, why in (("SELECT file('/etc/hostname')", "`file`"), ("SELECT * FROM api_keys", "`api_keys`"),
                      ("SELECT 1 INTO OUTFILE '/tmp/x'", "INTO OUTFILE")):
        res = tally(readers, "query", text)
        assert res.returncode == 1 and why in res.stderr, res.stderr

    # The read-only users' SQL: a settings profile with CONST limits, grants on analyst tables only.
    res = tally(readers, "migrate", "--print-access-sql")
    assert res.returncode == 0 and "analyst-pw" not in res.stdout and "dash-pw" not in res.stdout
    statements = [st.strip() for st in res.stdout.split(";\n")]
    assert statements[0].startswith("CREATE SETTINGS PROFILE OR REPLACE tally_analyst SETTINGS readonly = 1 CONST")
    assert "max_execution_time = 30 CONST" in statements[0]
    grants = [st for st in statements if st.startswith("GRANT")]
    assert "GRANT SELECT ON `default`.`api_keys` TO `tally_dashboard`" in grants
    assert not any("api_keys" in g and "tally_analyst" in g for g in grants)
    engine = connect(settings)
    for statement in statements:
        engine.raw_query("EXPLAIN AST " + statement)  # each parses
    engine.close()

    # Keys with the operator's credentials; the dashboard reads with its own user.
    res = tally(readers, "api-key", "create", "--site", "example.com")
    assert res.returncode == 0, res.stderr
    key = res.stdout.strip().splitlines()[-1]
    dash_env = {**readers, "TALLY_CLICKHOUSE_URL": url}  # the dashboard is given no sink password
    dash = spawn(Env({k: v for k, v in dash_env.items() if k.startswith("TALLY_")}), "dashboard")
    port = tally_env.settings.dashboard_port
    wait_for(lambda: http_ok(f"http://127.0.0.1:{port}/healthz"), 30, "dashboard")
    req = urllib.request.Request(f"http://127.0.0.1:{port}/api/v2/query", method="POST",
                                 headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json"},
                                 data=json.dumps({"site_id": "example.com", "metrics": ["visitors", "events"],
                                                  "date_range": "day", "dimensions": ["visit:device"]}).encode())
    with urllib.request.urlopen(req, timeout=60) as resp:
        assert json.loads(resp.read())["results"] == [{"dimensions": ["Mobile"], "metrics": [4, 12]}]
    assert dash.alive(), dash.output()[-2000:]
