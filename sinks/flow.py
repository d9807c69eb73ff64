"""How the sink reads while it cannot store: partitions held back until a seek, every
partition paused while ClickHouse refuses inserts, waits that keep the consumer group
membership alive, and retries with exponential backoff and jitter."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from confluent_kafka import Consumer, Message, TopicPartition
from tally.sinks.metrics import INSERT_FAILURES, PAUSED
from tenacity import Retrying, retry_if_exception_type, wait_exponential_jitter

log = logging.getLogger(__name__)


class Flow:
    def __init__(self, consumer: Consumer, stopping: threading.Event) -> None:
        self.consumer = consumer
        self.stopping = stopping
        self.held: dict[tuple[str, int], int] = {}  # paused partitions -> offset to resume from
        self.stash: list[Message] = []  # records fetched while waiting, kept for later
        self.outage_paused = False

    def hold(self, key: tuple[str, int], offset: int) -> None:
        """Pause one partition; it resumes from `offset` (release_held)."""
        self.held[key] = offset
        self.consumer.pause([TopicPartition(*key)])

    def assigned(self, partitions: list[TopicPartition]) -> None:
        """Take a new assignment (from on_assign) with the pause state the sink is in now:
        librdkafka keeps a partition's pause across a revoke and a new assignment, so a
        partition paused before it was lost (a broker outage) would come back paused, and
        with nothing read no insert would ever resume it."""
        self.consumer.assign(partitions)
        tps = [TopicPartition(tp.topic, tp.partition) for tp in partitions]
        if tps:
            (self.consumer.pause if self.outage_paused else self.consumer.resume)(tps)

    def release_held(self) -> None:
        if not self.held:
            return
        tps = [TopicPartition(t, p, off) for (t, p), off in self.held.items()]
        self.held.clear()
        for tp in tps:
            self.consumer.seek(tp)
        self.consumer.resume([TopicPartition(tp.topic, tp.partition) for tp in tps])

    def retry(self, what: str, fn: Callable[[], None],
              retry_on: type[BaseException] | tuple[type[BaseException], ...] = Exception,
              attempts: int | None = None) -> None:
        """Run fn until it succeeds: exponential backoff with jitter, consumption paused
        meanwhile. Gives up only when the sink is stopping (or after `attempts`)."""
        def stop(state: Any) -> bool:
            return self.stopping.is_set() or (attempts is not None and state.attempt_number >= attempts)

        def before_sleep(state: Any) -> None:
            INSERT_FAILURES.labels(table=what.removeprefix("insert into ")).inc()
            self.pause_all()
            log.warning("%s failed (attempt %d): %s; retrying in %.1fs", what, state.attempt_number,
                        str(state.outcome.exception()).strip()[:300], state.next_action.sleep)

        try:
            for attempt in Retrying(wait=wait_exponential_jitter(multiplier=0.2, max=15, jitter=0.5),
                                    retry=retry_if_exception_type(retry_on), stop=stop, reraise=True,
                                    sleep=self.idle, before_sleep=before_sleep):
                with attempt:
                    fn()
        finally:
            # Also when it gives up (a commit after `attempts`): nothing else would resume,
            # and a paused sink with an empty batch never inserts again.
            self.resume_all()

    def idle(self, seconds: float) -> None:
        """Wait while keeping the group membership alive (poll); anything fetched before the
        pause took effect is kept for later, not dropped."""
        deadline = time.monotonic() + seconds
        while not self.stopping.is_set() and (left := deadline - time.monotonic()) > 0:
            self.stash.extend(self.consumer.consume(num_messages=500, timeout=min(left, 0.5)))

    def pause_all(self) -> None:
        if not self.outage_paused:
            self.consumer.pause(self.consumer.assignment())
            self.outage_paused = True
            PAUSED.set(1)

    def resume_all(self) -> None:
        if self.outage_paused:
            self.outage_paused = False
            PAUSED.set(0)
            keep = [tp for tp in self.consumer.assignment() if (tp.topic, tp.partition) not in self.held]
            self.consumer.resume(keep)
            log.info("ClickHouse accepts inserts again; consumption resumed")
