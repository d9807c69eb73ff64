"""The Tansu fallback broker: `tally up` with TALLY_BROKER=tansu runs the whole path."""

from __future__ import annotations

import pytest

from tally.config import Settings
from tests.conftest import wait_for
from tests.helpers import BROWSER_UA, collect_url, post_json, query_rows
from tests.test_stack import pids, stack_env, tally

pytestmark = pytest.mark.integration


def test_stack_on_tansu(tmp_path):
    env = stack_env(tmp_path, broker="tansu")
    settings = Settings.from_env(env)
    try:
        up = tally(env, "up")
        assert up.returncode == 0, up.stderr
        assert "tansu broker" in up.stderr
        for _ in range(3):
            status, body, _ = post_json(collect_url(settings), {"site": "stack.test", "path": "/t"},
                                        headers={"User-Agent": BROWSER_UA})
            assert status == 204, body
        wait_for(lambda: query_rows(settings, "SELECT count() FROM pageviews FINAL")[0][0] == 3, 60,
                 "3 rows via tansu")
    finally:
        started = pids(settings.state_dir)
        tally(env, "down")
    assert "broker" in started
