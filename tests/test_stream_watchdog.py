"""The worker's watchdog on a real broker: a stage that hangs makes the worker log what is
stuck and exit non-zero, and `tally status` shows it stalled instead of healthy."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from tally.streams.liveness import STALLED_EXIT

from tests.conftest import REPO, wait_for
from tests.stream_support import produce_batches, traffic

pytestmark = pytest.mark.integration


def test_a_hung_stage_is_named_and_the_worker_exits_for_its_supervisor(tally_env, spawn):
    s = tally_env.settings
    tally_env.vars.update({"TALLY_TEST_WORKER_HANG": "stage2-windows", "TALLY_WORKER_STALL_SECONDS": "5"})
    worker = spawn(tally_env, "worker")
    produce_batches(s, traffic(2_000, seed=1))
    wait_for(lambda: not worker.alive(), 120, "the watchdog to stop the hung worker")
    assert worker.popen.returncode == STALLED_EXIT, worker.output()[-3000:]
    log = worker.output()
    assert "stalled: stage2-windows made no progress on " + s.topic("pageviews.enriched") in log, log[-3000:]
    assert "waiting for: test hook TALLY_TEST_WORKER_HANG=stage2-windows" in log, log[-3000:]

    status = subprocess.run([sys.executable, "-m", "tally.ops", "status", "--json"], cwd=REPO,
                            env=tally_env.child_env(), capture_output=True, text=True, timeout=60)
    assert status.returncode == 0, status.stderr
    row = next(r for r in json.loads(status.stdout)["components"] if r["component"] == "worker")
    assert row["ready"] is False
    assert row["health"]["state"] == "stalled" and "stage2-windows" in row["health"]["detail"]
