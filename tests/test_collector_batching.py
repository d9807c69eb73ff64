"""Micro-batches against a real broker of the test's own (it is paused): a beacon goes at
once when nothing is in flight; beacons that arrive while a batch awaits its ack wait for
it and go together, and a full batch (max_batch) never waits."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from tally.producers.collector.forwarder import Forwarder

from tests.conftest import Broker
from tests.helpers import read_batches
from tests.test_collector import FIREFOX, make_env
from tests.test_collector_outage import own_broker

pytestmark = pytest.mark.integration


@pytest.fixture
def own(tmp_path: Path) -> Iterator[Broker]:
    broker = own_broker(tmp_path)
    yield broker
    broker.stop()


def test_beacons_arriving_during_an_ack_wait_for_it_and_a_full_batch_does_not(own: Broker, tmp_path: Path) -> None:
    # No batch may go to the spool while the broker is paused.
    env = make_env(own, tmp_path, TALLY_SPOOL_AFTER_MS="60000")

    async def scenario() -> tuple[int, list[bool]]:
        fwd = Forwarder(env.settings, max_batch=4)
        await fwd.start()
        try:
            enc = fwd.encoder
            items = [enc.item(1_763_780_000_000 + i, "example.com", f"/p{i}", None, "pageview", {},
                              FIREFOX, "ab" * 16, False) for i in range(7)]
            assert await fwd.submit(items[0])  # the producer is connected and has its id
            assert own.proc is not None
            own.proc.send_signal(signal.SIGSTOP)  # no ack can come back until SIGCONT
            try:
                futures = []
                for item in items[1:]:  # one beacon per loop pass, as spread-out traffic arrives
                    futures.append(fwd.submit(item))
                    await asyncio.sleep(0.01)
                waiting = sum(not f.done() for f in futures)
            finally:
                own.proc.send_signal(signal.SIGCONT)
            return waiting, list(await asyncio.gather(*futures))
        finally:
            await fwd.close()

    waiting, ok = asyncio.run(scenario())
    assert waiting == 6 and ok == [True] * 6  # none answered before its ack; all durable
    sizes = sorted(len(b) for b in read_batches(env.settings, want=7))
    # The warm-up beacon and the next one went at once, alone; the next four waited for
    # that one's ack until they filled a batch, which went without waiting; the last waited.
    assert sizes == [1, 1, 1, 4]
