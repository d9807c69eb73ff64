"""Visitor-hash salts: 32 random bytes per period, shared by every worker through the
compacted single-partition `salts` topic.

Exactly one salt per period, even when workers race (start together, or at midnight):

1. A worker reads the salts topic to its end before deciding anything.
2. If no proposal for the period exists, it produces one: key `<period>:<proposer-id>`,
   value 32 random bytes.
3. It waits until it has read its *own* proposal back. Every proposal with a lower offset
   is now visible to it too, because the topic has one partition.
4. The proposal with the LOWEST offset wins. Every worker reaches the same answer. A loser
   tombstones its own proposal.

Grace: a period's salt lives until `period end + TALLY_SALT_GRACE_HOURS`; then any worker
tombstones it (and forgets it). The topic's compaction settings (tally/topics.py) make
the log cleaner drop the tombstoned value within hours, so no topic, table or file can
re-derive an old visitor hash afterwards (forward secrecy). A salt is never derived from
the date, and events are never hashed unsalted: without a salt they go to bad rows as
`no_salt`.

Salts are secrets: nothing here logs a salt value.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition
from tally.streams.watchdog import Watchdog

from tally.config import Settings
from tally.kafka import consumer_config, producer_config
from tally.topics import SALTS

log = logging.getLogger(__name__)

SALT_BYTES = 32


def period_key(received_at: datetime, period: str) -> str:
    return received_at.astimezone(UTC).strftime("%Y-%m-%d" if period == "day" else "%Y-%m")


def period_bounds(key: str) -> tuple[datetime, datetime]:
    """[start, end) of a period key (UTC)."""
    if len(key) == 10:
        start = datetime.strptime(key, "%Y-%m-%d").replace(tzinfo=UTC)
        return start, start + timedelta(days=1)
    start = datetime.strptime(key, "%Y-%m").replace(tzinfo=UTC)
    end = (start + timedelta(days=32)).replace(day=1)
    return start, end


def expired(key: str, now: datetime, grace: timedelta) -> bool:
    return period_bounds(key)[1] + grace <= now


class SaltKeeper:
    """Follows the salts topic in a background thread and answers `salt(period)`."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime] | None = None,
                 proposer: str | None = None) -> None:
        self.settings = settings
        self.topic = settings.topic(SALTS)
        self.period = settings.salt_period
        self.grace = timedelta(hours=settings.salt_grace_hours)
        self.clock = clock or (lambda: datetime.now(UTC) + timedelta(seconds=settings.clock_offset_seconds))
        self.proposer = proposer or uuid.uuid4().hex[:16]
        # key -> (offset, salt) of live (not tombstoned) proposals
        self._live: dict[str, tuple[int, bytes]] = {}
        self._read_upto = -1  # highest offset consumed
        self._caught_up = threading.Event()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._producer = Producer(producer_config(settings, **{"linger.ms": 0}))
        self._consumer = Consumer(consumer_config(settings, f"{settings.app_id}-salts-reader",
                                                  **{"enable.partition.eof": True}))
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._follow, name="salts", daemon=True)
        self._thread.start()
        self._last_expiry = 0.0

    # -- reading the topic -------------------------------------------------------------
    def _follow(self) -> None:
        while not self._stop.is_set():
            msg = self._consumer.poll(0.2)
            if msg is None:
                continue
            if msg.error():
                if msg.error().code() == KafkaError._PARTITION_EOF:
                    self._caught_up.set()
                    with self._cond:
                        self._cond.notify_all()
                else:
                    log.warning("salts topic: %s", msg.error())
                continue
            key = (msg.key() or b"").decode(errors="replace")
            with self._cond:
                if msg.value() is None:
                    self._live.pop(key, None)
                elif len(msg.value()) == SALT_BYTES:
                    self._live[key] = (msg.offset(), msg.value())
                self._read_upto = max(self._read_upto, msg.offset())
                self._cond.notify_all()
        self._consumer.close()

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._producer.flush(5)

    def _winner(self, period: str) -> tuple[str, bytes] | None:
        best: tuple[int, str, bytes] | None = None
        for key, (offset, salt) in self._live.items():
            if key.split(":", 1)[0] == period and (best is None or offset < best[0]):
                best = (offset, key, salt)
        return (best[1], best[2]) if best else None

    # -- answering -------------------------------------------------------------------
    def salt(self, period: str, timeout: float = 30.0) -> bytes | None:
        """The salt of `period`, proposing one if none exists. None when the period's salt is
        expired (past the grace window) or the topic cannot be reached within `timeout`."""
        deadline = time.monotonic() + timeout
        if not self._caught_up.wait(timeout):
            log.error("salts topic %s not readable within %.0fs", self.topic, timeout)
            return None
        self.expire()
        if expired(period, self.clock(), self.grace):
            return None
        with self._cond:
            won = self._winner(period)
        if won:
            return won[1]
        mine = f"{period}:{self.proposer}"
        offset = self._produce(mine, secrets.token_bytes(SALT_BYTES), deadline)
        if offset is None:
            return None
        with self._cond:
            while self._read_upto < offset:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("own salt proposal for %s not read back in time", period)
                    return None
                self._cond.wait(left)
            won = self._winner(period)
        if won is None:  # our proposal was expired by someone in between
            return None
        if won[0] != mine:
            self._produce(mine, None, deadline)  # lost the race: withdraw our proposal
        else:
            log.info("salt for period %s created by this worker (%s)", period, self.proposer)
        return won[1]

    def _produce(self, key: str, value: bytes | None, deadline: float) -> int | None:
        result: dict[str, object] = {}

        def done(err, msg) -> None:  # type: ignore[no-untyped-def]
            result["err"], result["offset"] = err, (msg.offset() if msg is not None else None)

        self._producer.produce(self.topic, key=key.encode(), value=value, partition=0, on_delivery=done)
        while "err" not in result and time.monotonic() < deadline:
            self._producer.poll(0.1)
        if result.get("err") or "offset" not in result:
            log.error("salts topic: could not write %s: %s", key.split(":")[0], result.get("err", "timeout"))
            return None
        return int(result["offset"])  # type: ignore[arg-type]

    def expire(self) -> list[str]:
        """Tombstone every salt (and proposal) whose period is past the grace window."""
        now = self.clock()
        with self._cond:
            old = [k for k in self._live if expired(k.split(":", 1)[0], now, self.grace)]
            for k in old:
                self._live.pop(k, None)  # forget it now; the tombstone follows
        for k in old:
            self._producer.produce(self.topic, key=k.encode(), value=None, partition=0)
            log.info("salt %s expired: tombstoned", k)
        if old:
            self._producer.flush(10)
        return old

    def known_periods(self) -> list[str]:
        with self._cond:
            return sorted({k.split(":", 1)[0] for k in self._live})


class SaltCache:
    """The salts this worker has looked up, by period, in front of a SaltKeeper (made on first
    need). Lookups run in a thread and are waits the watchdog can name; expired salts are
    forgotten here too (forward secrecy applies to this process's memory as well)."""

    def __init__(self, settings: Settings, clock: Callable[[], datetime], watchdog: Watchdog) -> None:
        self.settings = settings
        self.clock = clock
        self.watchdog = watchdog
        self.grace = timedelta(hours=settings.salt_grace_hours)
        self._salts: dict[str, bytes] = {}
        self._keeper: SaltKeeper | None = None

    async def get(self, period: str) -> bytes | None:
        salt = self._salts.get(period)
        if salt is not None:
            return salt
        if self._keeper is None:
            self._keeper = SaltKeeper(self.settings, clock=self.clock)
        with self.watchdog.waiting(f"the salt of period {period}"):
            salt = await asyncio.get_running_loop().run_in_executor(None, self._keeper.salt, period)
        if salt is not None:
            self._salts[period] = salt
        return salt

    async def expire(self) -> None:
        if self._keeper is not None:
            await asyncio.get_running_loop().run_in_executor(None, self._keeper.expire)
        now = self.clock()
        for period in [k for k in self._salts if expired(k, now, self.grace)]:
            del self._salts[period]
