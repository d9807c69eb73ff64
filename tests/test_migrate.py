"""Migrations on the real engine (chDB, in this process): idempotent, recorded, and a
retention change becomes ALTER ... MODIFY TTL that actually deletes expired rows."""

from __future__ import annotations

import pytest
from tally.sinks.migrate import migrate as apply
from tally.sinks.migrate import migrations, render, repeatables, split_statements, template_values
from tally.sinks.warehouse import connect

from tally.config import Settings

pytestmark = pytest.mark.integration


def test_templates_leave_query_parameters_alone():
    values = template_values(Settings())
    sql = render("SELECT {site:String}, {raw_retention_days}, {families}", values)
    assert sql.startswith("SELECT {site:String}, 540, [('onboarding', 'Onboarding checkpoints', 1)")
    assert split_statements("-- note; with a semicolon\nSELECT 1;\n\nSELECT 2;") == ["SELECT 1", "SELECT 2"]
    assert [m.version for m in migrations()] == sorted({m.version for m in migrations()})
    assert {m.name for m in repeatables()} >= {"retention", "views"}


def test_migrate_is_idempotent_and_retention_changes_delete(tmp_path):
    s = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path)})
    client = connect(s)
    try:
        first = apply(client, s)
        assert "001_pageviews" in first and any(n.startswith("R_views") for n in first)
        assert apply(client, s) == []
        versions = client.query("SELECT version FROM tally_migrations ORDER BY version").result_rows
        assert [v[0] for v in versions] == [m.version for m in migrations()]
        tables = {r[0] for r in client.query("SHOW TABLES").result_rows}
        assert {"pageviews", "aggregates", "product_events", "drops", "bad_rows", "site_stats_daily",
                "top_pages", "adoption_summary"} <= tables

        client.command("INSERT INTO pageviews (event_id, received_at, site, path, visitor_id) VALUES "
                       "(generateUUIDv4(), now64() - INTERVAL 10 DAY, 's', '/old', 1), "
                       "(generateUUIDv4(), now64() - INTERVAL 1 DAY, 's', '/new', 2)")
        assert client.query("SELECT count() FROM pageviews").result_rows[0][0] == 2

        shorter = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path), "TALLY_RAW_RETENTION_DAYS": "5"})
        applied = apply(client, shorter)
        assert len(applied) == 1 and applied[0].startswith("R_retention"), applied
        ddl = client.command("SHOW CREATE TABLE pageviews")
        assert "toIntervalDay(5)" in ddl
        client.command("OPTIMIZE TABLE pageviews FINAL")
        assert [r[0] for r in client.query("SELECT path FROM pageviews").result_rows] == ["/new"]
        assert apply(client, shorter) == []
        # Aggregates keep no TTL whatever the retention (seed 002: they outlive the raw rows).
        assert "TTL" not in client.command("SHOW CREATE TABLE aggregates")

        # bad_rows_unique: the same rejection sent twice (a stage replayed after a crash)
        # counts once; rows without a Kafka source (offset -1) are all kept.
        client.command("INSERT INTO bad_rows (failed_at, component, reason, source_topic, source_partition, "
                       "source_offset, original) VALUES "
                       "(now64(), 'sink', 'undecodable', 'pv', 3, 41, 'x'), "
                       "(now64() + 1, 'sink', 'undecodable', 'pv', 3, 41, 'x'), "
                       "(now64(), 'worker', 'no_salt', 'raw', 3, 41, 'b1'), "
                       "(now64(), 'worker', 'no_salt', 'raw', 3, 41, 'b2'), "
                       "(now64(), 'collector', 'bad_json', '', -1, -1, 'y'), "
                       "(now64(), 'collector', 'bad_json', '', -1, -1, 'y')")
        assert client.query("SELECT count() FROM bad_rows_unique").result_rows[0][0] == 5
    finally:
        client.close()


def test_migrate_while_the_sink_owns_the_warehouse_says_how_to_apply(tally_env, spawn):
    """chDB allows one process per data directory: with the sink running, `tally migrate`
    exits non-zero with a message naming the owner and the restart, not a lock traceback.
    With the sink stopped, the same command migrates (nothing left: the sink did it)."""
    import subprocess
    import sys

    from tally.ops.stack import http_ok

    from tests.conftest import REPO, wait_for

    s = tally_env.settings
    sink = spawn(tally_env, "sink")
    wait_for(lambda: http_ok(f"http://127.0.0.1:{s.query_port}/healthz"), 60, "sink endpoint")

    def tally_migrate() -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "tally.ops", "migrate"], cwd=REPO,
                              env={**tally_env.child_env(), "COLUMNS": "300"},
                              capture_output=True, text=True, timeout=120)

    busy = tally_migrate()
    assert busy.returncode == 1, busy.stdout + busy.stderr
    message = " ".join(busy.stderr.split())
    assert "Traceback" not in busy.stderr
    assert "owned by the running sink" in message and "restart it" in message, message
    assert sink.alive()

    sink.stop()
    done = tally_migrate()
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.strip() == "nothing to apply"


def test_drops_upgrade_keeps_old_counts_and_counts_a_replayed_source_once(tmp_path):
    """007 turns the summed `drops` into one row per source record: counts stored before it
    keep their sums, and a worker's count sent twice for the same input is counted once."""
    import shutil

    from tally.sinks.migrate import DDL_DIR

    before = tmp_path / "ddl-006"
    before.mkdir()
    for path in DDL_DIR.glob("*.sql"):
        if not path.name.startswith("007"):
            shutil.copy(path, before / path.name)
    s = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path / "state")})
    client = connect(s)
    try:
        apply(client, s, before)
        client.command("INSERT INTO drops VALUES ('a', today(), 'bot', 'worker', 3), ('a', today(), 'bot', 'worker', 4), "
                       "('b', today(), 'gpc', 'collector', 2)")
        assert "007_drops_by_source" in apply(client, s)
        assert client.query("SELECT sum(dropped) FROM drops_daily").result_rows[0][0] == 9
        client.command("INSERT INTO drops VALUES ('a', today(), 'bot', 'worker', 5, 2, 77), "
                       "('a', today(), 'bot', 'worker', 5, 2, 77), ('a', today(), 'bot', 'worker', 1, 2, 78)")
        assert dict(client.query("SELECT site, sum(dropped) FROM drops_daily GROUP BY site").result_rows) == \
            {"a": 13, "b": 2}
        client.command("OPTIMIZE TABLE drops FINAL")
        # a+b from before (the old engine had already summed the two a rows), 77 once, 78
        assert client.query("SELECT count(), sum(count) FROM drops").result_rows[0] == (4, 15)
    finally:
        client.close()


KILLING_MIGRATE = """
import json, os, shutil, signal, sys
from pathlib import Path
from tally.config import Settings
from tally.sinks.migrate import DDL_DIR, migrate, migrations
from tally.sinks.warehouse import connect

state, step, when = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
s = Settings.from_env({"TALLY_STATE_DIR": str(state)})
client = connect(s)
if step:
    before = state.parent / "ddl-006"
    before.mkdir(exist_ok=True)
    for path in DDL_DIR.glob("*.sql"):
        if not path.name.startswith(("007", "008")):
            shutil.copy(path, before / path.name)
    migrate(client, s, before)
    client.command("INSERT INTO drops VALUES ('a', today(), 'bot', 'worker', 3), "
                   "('a', today(), 'bot', 'worker', 4), ('b', today(), 'gpc', 'collector', 2)")
    target = next(m for m in migrations() if m.version == 7).statements(s)[step - 1]
    command, insert, armed = client.command, client.insert, []

    def killing_command(sql, *args, **kwargs):
        out = command(sql, *args, **kwargs)
        if sql == target:
            armed.append(1)
            if when == "statement":  # it ran; its step is not recorded
                os.kill(os.getpid(), signal.SIGKILL)
        return out

    def killing_insert(table, *args, **kwargs):
        out = insert(table, *args, **kwargs)
        if table == "tally_migration_steps" and armed:  # it ran and its step is recorded
            os.kill(os.getpid(), signal.SIGKILL)
        return out

    client.command, client.insert = killing_command, killing_insert
    migrate(client, s)
    sys.exit("not killed")
else:
    migrate(client, s)
    print(json.dumps({
        "sums": client.query("SELECT site, sum(dropped) FROM drops_daily GROUP BY site ORDER BY site").result_rows,
        "tables": sorted(r[0] for r in client.query(
            "SELECT name FROM system.tables WHERE database = currentDatabase() AND name LIKE 'drops%'").result_rows),
        "versions": [r[0] for r in client.query("SELECT version FROM tally_migrations ORDER BY version").result_rows],
        "shape": [r[0] for r in client.query("SELECT name FROM system.columns WHERE database = currentDatabase() "
                                             "AND table = 'drops' ORDER BY position").result_rows],
    }, default=str))
"""


@pytest.mark.parametrize("when", ["statement", "recorded"])
def test_migration_007_killed_after_each_statement_then_rerun(tmp_path, when):
    """007 is not transactional: killed (SIGKILL) after any of its statements, either before
    or after the statement is recorded, a re-run finishes it with the old counts kept
    exactly once and the warehouse usable (the sink's own start runs this migrate)."""
    import json
    import subprocess
    import sys

    from tests.conftest import REPO

    s = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path)})
    count = len(next(m for m in migrations() if m.version == 7).statements(s))
    assert count == 4
    for step in range(1, count + 1):
        state = tmp_path / f"kill-{step}" / "state"
        killed = subprocess.run([sys.executable, "-c", KILLING_MIGRATE, str(state), str(step), when],
                                cwd=REPO, capture_output=True, text=True, timeout=180)
        assert killed.returncode == -9, (step, killed.stderr[-2000:])
        rerun = subprocess.run([sys.executable, "-c", KILLING_MIGRATE, str(state), "0", when],
                               cwd=REPO, capture_output=True, text=True, timeout=180)
        assert rerun.returncode == 0, (step, rerun.stderr[-2000:])
        got = json.loads(rerun.stdout)
        assert got["sums"] == [["a", 7], ["b", 2]], (step, got)
        assert got["tables"] == ["drops", "drops_daily"], (step, got)
        assert 7 in got["versions"] and got["shape"][-2:] == ["source_partition", "source_offset"], (step, got)
