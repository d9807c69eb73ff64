"""Local hygiene (issue #15 item 6): private state files, no secret on screen, a strong edge
secret, no client address in logs."""

from __future__ import annotations

import logging
import os
import stat
import subprocess
import sys
import uuid

import pytest
from aiohttp.http_exceptions import BadHttpMessage
from tally.producers.collector.logs import NoAddresses, ServerLog

from tally.config import Settings, SettingsError, mask_password

SECRET = "Q3vT9xLp2mZ8rB6kN1wY4sD7fH0jG5cA+e/i"
CH_URL = "http://analyst:hunter2-pass@ch.example:8123/db"


def run(code: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], env={**os.environ, **env}, capture_output=True,
                          text=True, timeout=120, check=False)


@pytest.mark.parametrize("weak", ["short", "a" * 64, "0123456789abcdef0123"])
def test_a_weak_edge_secret_is_refused_naming_the_variable(weak):
    with pytest.raises(SettingsError, match="TALLY_EDGE_SECRET.*32 random bytes"):
        Settings.from_env({"TALLY_EDGE_SECRET": weak})
    assert Settings.from_env({"TALLY_EDGE_SECRET": SECRET}).edge_secret == SECRET


def test_credentials_are_masked_and_secrets_hidden_on_screen(tmp_path):
    assert "hunter2" not in mask_password(CH_URL) and mask_password("http://h:1/") == "http://h:1/"
    shown = Settings.from_env({"TALLY_EDGE_SECRET": SECRET, "TALLY_CLICKHOUSE_URL": CH_URL}).public_values()
    assert SECRET not in str(shown) and "hunter2" not in str(shown)
    out = subprocess.run([sys.executable, "-m", "tally.ops", "config", "check"], capture_output=True, text=True,
                         env={**os.environ, "TALLY_EDGE_SECRET": SECRET, "TALLY_CLICKHOUSE_URL": CH_URL,
                              "TALLY_STATE_DIR": str(tmp_path / "s")}, timeout=120, check=True)
    assert '"edge_secret": "***"' in out.stdout
    assert SECRET not in out.stdout + out.stderr and "hunter2" not in out.stdout + out.stderr


def test_every_entry_point_keeps_the_state_dir_and_its_files_private(tmp_path):
    state = tmp_path / "state"
    state.mkdir(mode=0o755)
    state.chmod(0o755)
    got = run("from tally.runtime import load_settings\n"
              "s = load_settings()\n"
              "(s.state_dir / 'logs').mkdir()\n"
              "(s.state_dir / 'logs' / 'x.log').write_text('x')\n", {"TALLY_STATE_DIR": str(state)})
    assert got.returncode == 0, got.stderr
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "logs").stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "logs" / "x.log").stat().st_mode) == 0o600


@pytest.mark.parametrize("message", ["request from 203.0.113.7.", "peer 203.0.113.7, then 2001:db8::7 left",
                                     "bad line 'GET / HTTP/1.1' from 203.0.113.7"])
def test_client_addresses_never_reach_a_log_line(message):
    record = logging.LogRecord("aiohttp.server", logging.ERROR, __file__, 1, message, (), None)
    NoAddresses().filter(record)
    assert "203.0.113.7" not in record.getMessage() and "2001:db8::7" not in record.getMessage()
    assert "<address>" in record.getMessage()


@pytest.mark.parametrize("exc", [BadHttpMessage("Invalid header: X-Forwarded-For 203.0.113.7"),
                                 ValueError("a bug"), None])
def test_the_server_log_never_formats_the_client_address(exc):
    """At the source, with no filter: aiohttp's error line loses its address argument, and a
    client's malformed request (whose text quotes the request) is named by its class only."""
    records: list[logging.LogRecord] = []
    logger = logging.getLogger(f"test-serverlog-{uuid.uuid4().hex[:6]}")
    logger.propagate = False
    logger.addHandler(type("Keep", (logging.Handler,), {"emit": lambda self, r: records.append(r)})())
    ServerLog(logger).exception("Error handling request from %s", "203.0.113.7", exc_info=exc)
    ServerLog(logger).debug("Error handling request from %s", "203.0.113.7")  # below the level: nothing
    (record,) = records
    text = logging.Formatter().format(record)
    assert "203.0.113.7" not in text and record.args == ()
    assert text.startswith("Error handling request from <client>")
    assert (": BadHttpMessage" in text) == isinstance(exc, BadHttpMessage)
    assert ("ValueError: a bug" in text) == isinstance(exc, ValueError)  # our own errors keep their traceback
