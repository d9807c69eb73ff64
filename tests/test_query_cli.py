"""`tally query` argument handling: raw SQL by default, named reports as subcommands,
--format anywhere. (The reports' SQL runs against the real engine in
test_sink_pipeline.py; here only what reaches the runner is checked.)"""

from __future__ import annotations

import pytest
from click.testing import CliRunner
from tally.sinks import cli


@pytest.fixture
def ran(monkeypatch):
    calls: list[tuple[str, str]] = []
    monkeypatch.setattr(cli, "_run", lambda sql, fmt: calls.append((sql, fmt)))
    return calls


@pytest.mark.parametrize("args, sql, fmt", [
    (["SELECT 1"], "SELECT 1", "table"),
    (["SELECT 1", "--format", "csv"], "SELECT 1", "csv"),
    (["--format", "json", "SELECT 2"], "SELECT 2", "json"),
    (["sql", "SELECT 3"], "SELECT 3", "table"),
])
def test_raw_sql_is_the_default(ran, args, sql, fmt):
    result = CliRunner().invoke(cli.query, args)
    assert result.exit_code == 0, result.output
    assert ran == [(sql, fmt)]


def test_reports_render_their_window(ran):
    result = CliRunner().invoke(cli.query, ["stats", "--site", "it's.test", "--from", "2026-11-01",
                                            "--to", "2026-11-03", "--format", "csv"])
    assert result.exit_code == 0, result.output
    sql, fmt = ran[0]
    assert fmt == "csv" and "site = 'it\\'s.test'" in sql and "BETWEEN '2026-11-01' AND '2026-11-03'" in sql
    result = CliRunner().invoke(cli.query, ["top-pages", "--site", "a", "--from", "2026-11-05", "--to", "2026-11-01"])
    assert result.exit_code != 0 and "before" in result.output
    result = CliRunner().invoke(cli.query, ["adoption", "--from", "2026-11-01", "--to", "2026-11-30"])
    assert result.exit_code == 0 and "adoption_summary(date_from = '2026-11-01', date_to = '2026-11-30')" in ran[-1][0]
