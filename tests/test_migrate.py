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
    finally:
        client.close()
