"""The worker's wiring (streams/app.py), against the real broker: Faust's pre-commit flush
delivers the worker's own outputs first, without patching Faust."""

from __future__ import annotations

import asyncio

import pytest
from tally.streams.app import make_app
from tally.streams.outputs import FlushingProducer

from tally.periodkeys import close_open_keepers
from tally.topics import BAD_ROWS
from tests.stream_support import read_all


@pytest.fixture(autouse=True)
def close_salt_keepers():
    """make_app starts the worker's salt keeper (a consumer and its thread); these apps never
    run, so nothing else would stop it before the broker goes away."""
    yield
    close_open_keepers()


def test_fausts_flush_delivers_the_workers_outputs_first(tally_env):
    settings = tally_env.settings
    app = make_app(settings)
    producer = app.producer
    assert isinstance(producer, FlushingProducer)  # Faust's own producer class, subclassed, not patched
    producer.outputs.produce(settings.topic(BAD_ROWS), b"an output record")
    assert len(producer.outputs.producer) == 1  # queued in librdkafka, not delivered yet
    asyncio.run(producer.flush())  # what Faust awaits before committing offsets
    assert len(producer.outputs.producer) == 0
    assert [m.value() for m in read_all(settings, BAD_ROWS)] == [b"an output record"]


def test_exactly_once_keeps_fausts_transactional_producer(tally_env):
    from tally.config import Settings

    settings = Settings.from_env({**tally_env.vars, "TALLY_PROCESSING_GUARANTEE": "exactly_once"})
    assert not isinstance(make_app(settings).producer, FlushingProducer)


def test_shutting_down_closes_the_workers_salt_keeper(tally_env):
    from tally import periodkeys

    close_open_keepers()
    app = make_app(tally_env.settings)  # checks the clock: the salt keeper starts here
    (keeper,) = list(periodkeys._OPEN)
    assert keeper._thread.is_alive()
    asyncio.run(app.on_before_shutdown.send())  # what Faust sends when the worker stops
    assert not keeper._thread.is_alive()
    assert not list(periodkeys._OPEN)
