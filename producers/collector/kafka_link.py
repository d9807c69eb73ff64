"""A collector worker's librdkafka producer: polled by a thread of its own (which serves the
delivery callbacks), and replaced in place when it fails for good."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable

from confluent_kafka import KafkaError, KafkaException, Producer

from tally.config import Settings
from tally.kafka import producer_config

log = logging.getLogger(__name__)

# librdkafka never gives up on a batch over a retriable error (0: no timeout). A batch
# that timed out may still be in the leader's log, waiting for min.insync.replicas (two
# of three nodes down, say); sending it again would store it twice once the followers
# return. The idempotent producer's own retries cannot: the broker drops a repeated
# sequence number. Requests never wait for this (they are answered from the spool after
# TALLY_SPOOL_AFTER_MS); a batch in flight holds up the replay behind it until delivered.
MESSAGE_TIMEOUT_MS = 0


class ProducerLink:
    def __init__(self, settings: Settings, on_fatal: Callable[[], None], on_replaced: Callable[[], None]) -> None:
        """on_fatal: called (on the event loop) before a failed producer is replaced;
        on_replaced: after its replacement is in place."""
        self.on_fatal, self.on_replaced = on_fatal, on_replaced
        self._config = producer_config(settings, **{
            "linger.ms": 0, "socket.nagle.disable": True, "message.timeout.ms": MESSAGE_TIMEOUT_MS, "log_level": 3,
            "error_cb": self.on_client_error})
        self.producer = Producer(self._config)
        # Producers replaced after a fatal error: still polled, so the batches they held
        # report their failure (and go to the spool); see _replace().
        self.retired: list[Producer] = []
        self.replaced = 0
        self.fatal_error: str | None = None
        self._polling: Producer | None = None  # the producer the poll thread is polling
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="kafka-poll", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._poller.start()

    def stop(self) -> None:
        self._stop.set()

    def on_client_error(self, err: KafkaError) -> None:
        # Runs on the poll thread. A fatal error (e.g. the idempotent producer's sequence
        # broke) leaves this producer unusable for good: it is replaced in place (on the
        # event loop) rather than failing the process.
        if err.fatal():
            log.critical("Kafka producer failed for good: %s; replacing it (batches it still "
                         "held go to the spool and are replayed in order)", err.str())
            assert self._loop is not None
            failed = self._polling or self.producer  # the callback comes from that producer's poll()
            self._loop.call_soon_threadsafe(self._replace, failed, err.str())

    def _replace(self, failed: Producer, reason: str) -> None:
        """A new producer instead of one that hit a fatal error.

        The failed producer fails every batch it still holds (librdkafka reports them with
        the fatal error): those go to the spool as on any failed delivery. The forwarder
        enters spooling first (on_fatal), so new batches queue behind them on disk, and the
        replay sends everything in acceptance order through the new producer. Only if a new
        producer cannot be made does /readyz turn 503, so the process gets restarted.
        """
        if failed is not self.producer:
            return  # already replaced
        self.on_fatal()
        try:
            self.producer = Producer(self._config)
        except KafkaException as exc:
            self.fatal_error = f"{reason}; a new producer could not be made: {exc}"
            log.critical("%s", self.fatal_error)
            return
        self.retired.append(failed)
        self.replaced += 1
        self.fatal_error = None
        self.on_replaced()

    def _poll(self) -> None:
        while not self._stop.is_set():
            self._polling = self.producer
            self._polling.poll(0.05)
            for retired in self.retired:
                self._polling = retired
                retired.poll(0)
