"""Per-period random keys shared through a compacted single-partition topic: the stream
workers' visitor-hash salts (`salts`, streams/salts.py) and the collectors' edge keys
(`edge-keys`, producers/collector/edgekeys.py) are both kept by `PeriodKeys`.

Exactly one key per period, even when processes race (start together, or at midnight):

1. A keeper reads the topic to its end before deciding anything.
2. If no proposal for the period exists, it produces one: key `<period>:<proposer-id>`,
   value 32 random bytes.
3. It waits until it has read its *own* proposal back. Every proposal with a lower offset
   is now visible to it too, because the topic has one partition.
4. The proposal with the LOWEST offset wins. Every keeper reaches the same answer. A loser
   tombstones its own proposal.

Grace: a period's key lives until `period end + TALLY_SALT_GRACE_HOURS`; then any keeper
tombstones it (and forgets it), checking each tombstone's delivery and retrying it on the
next expiry pass. The topic's settings (tally/topics.py) make the log cleaner drop the
tombstoned value within hours, so nothing can re-derive an old pseudonym afterwards
(forward secrecy). A key is never derived from the date.

A keeper whose clock runs ahead must not destroy the live key: expiry uses the EARLIER of
the keeper's clock and the broker's (the LogAppendTime of a probe record, shifted by the
TALLY_CLOCK_OFFSET_SECONDS test hook like every clock of the process).

Keys are secrets: nothing here logs a key value.
"""

from __future__ import annotations

import atexit
import logging
import secrets
import threading
import time
import uuid
import weakref
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_LOG_APPEND_TIME,
    Consumer,
    KafkaError,
    Producer,
    TopicPartition,
)

from tally.config import Settings
from tally.kafka import consumer_config, producer_config

log = logging.getLogger(__name__)

KEY_BYTES = 32
PROBE = "clock-probe"  # key prefix of the records that ask the broker for its time
# Kafka never compacts the active segment, so a tombstone only takes the old key away once
# its segment rolls, and a segment rolls (after segment.ms: TALLY_KEY_SHRED_SECONDS on keys
# topics) only when something is appended. For three segment.ms after a tombstone, and at
# least three of the worker's minute-long expiry intervals, every expiry pass appends a probe.
ROLL_SEGMENTS = 3
ROLL_MIN_SECONDS = 180


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
    try:
        return period_bounds(key)[1] + grace <= now
    except ValueError:  # not a period (a clock probe): never a key to expire
        return False


# Keepers whose thread still runs. librdkafka's threads log through Python (the "logger"
# below): one still logging while the interpreter finalizes can crash it, so every keeper
# left open is closed at exit, before that.
_OPEN: weakref.WeakSet[PeriodKeys] = weakref.WeakSet()


@atexit.register
def close_open_keepers() -> None:
    """Close every keeper still open (at exit; tests call it after a worker they never ran)."""
    for keeper in list(_OPEN):
        keeper.close()


class PeriodKeys:
    """Follows one keys topic in a background thread and answers `key(period)`."""

    def __init__(self, settings: Settings, topic: str, reader_group: str,
                 clock: Callable[[], datetime] | None = None, proposer: str | None = None) -> None:
        self.settings = settings
        self.topic = topic
        self.period = settings.salt_period
        self.grace = timedelta(hours=settings.salt_grace_hours)
        self.clock = clock or (lambda: datetime.now(UTC) + timedelta(seconds=settings.clock_offset_seconds))
        self.proposer = proposer or uuid.uuid4().hex[:16]
        # key -> (offset, value) of live (not tombstoned) proposals
        self._live: dict[str, tuple[int, bytes]] = {}
        self._unconfirmed: set[str] = set()  # expired keys whose tombstone is not acknowledged yet
        self._roll_until = 0.0  # monotonic time until which expiry passes append roll records
        self._read_upto = -1  # highest offset consumed
        self._caught_up = threading.Event()
        self._cond = threading.Condition()
        self._stop = threading.Event()
        # librdkafka's own lines go through Python logging, so a process's log filters apply
        # (the collector's NoAddresses).
        self._producer = Producer(producer_config(settings, **{"linger.ms": 0, "logger": log}))
        self._consumer = Consumer(consumer_config(settings, reader_group, **{"enable.partition.eof": True,
                                                                            "logger": log}))
        self._consumer.assign([TopicPartition(self.topic, 0, OFFSET_BEGINNING)])
        self._thread = threading.Thread(target=self._follow, name=f"keys-{topic}", daemon=True)
        self._thread.start()
        _OPEN.add(self)

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
                    log.warning("%s topic: %s", self.topic, msg.error())
                continue
            key = (msg.key() or b"").decode(errors="replace")
            with self._cond:
                if msg.value() is None:
                    self._live.pop(key, None)
                elif len(msg.value()) == KEY_BYTES:
                    self._live[key] = (msg.offset(), msg.value())
                self._read_upto = max(self._read_upto, msg.offset())
                self._cond.notify_all()
        self._consumer.close()

    def close(self) -> None:
        _OPEN.discard(self)
        self._stop.set()
        self._thread.join(5)
        self._producer.flush(5)

    def _winner(self, period: str) -> tuple[str, bytes] | None:
        best: tuple[int, str, bytes] | None = None
        for key, (offset, value) in self._live.items():
            if key.split(":", 1)[0] == period and (best is None or offset < best[0]):
                best = (offset, key, value)
        return (best[1], best[2]) if best else None

    # -- answering -------------------------------------------------------------------
    def key(self, period: str, timeout: float = 30.0) -> bytes | None:
        """The key of `period`, proposing one if none exists. None when the period's key is
        expired (past the grace window) or the topic cannot be reached within `timeout`."""
        deadline = time.monotonic() + timeout
        if not self._caught_up.wait(timeout):
            log.error("%s topic not readable within %.0fs", self.topic, timeout)
            return None
        self.expire()
        if expired(period, self.clock(), self.grace):
            return None
        with self._cond:
            won = self._winner(period)
        if won:
            return won[1]
        mine = f"{period}:{self.proposer}"
        offset = self._produce(mine, secrets.token_bytes(KEY_BYTES), deadline)
        if offset is None:
            return None
        with self._cond:
            while self._read_upto < offset[0]:
                left = deadline - time.monotonic()
                if left <= 0:
                    log.error("own proposal for %s on %s not read back in time", period, self.topic)
                    return None
                self._cond.wait(left)
            won = self._winner(period)
        if won is None:  # our proposal was expired by someone in between
            return None
        if won[0] != mine:
            self._produce(mine, None, deadline)  # lost the race: withdraw our proposal
        else:
            log.info("key for period %s created on %s by %s", period, self.topic, self.proposer)
        return won[1]

    def _produce(self, key: str, value: bytes | None, deadline: float) -> tuple[int, tuple[int, int]] | None:
        """(offset, (timestamp type, timestamp ms)) of a delivered record; None on failure."""
        result: dict[str, object] = {}

        def done(err, msg) -> None:  # type: ignore[no-untyped-def]
            result["err"] = err
            if msg is not None and err is None:
                result["offset"], result["ts"] = msg.offset(), msg.timestamp()

        self._producer.produce(self.topic, key=key.encode(), value=value, partition=0, on_delivery=done)
        while "err" not in result and time.monotonic() < deadline:
            self._producer.poll(0.1)
        if result.get("err") or "offset" not in result:
            log.error("%s topic: could not write %s: %s", self.topic, key.split(":")[0],
                      result.get("err", "timeout"))
            return None
        return int(result["offset"]), result["ts"]  # type: ignore[arg-type,return-value]

    def broker_now(self, timeout: float = 10.0) -> datetime | None:
        """The broker's clock (plus the process's test offset), from a probe record's
        LogAppendTime; None when the topic does not stamp append times or is unreachable."""
        got = self._produce(f"{PROBE}:{self.proposer}", None, time.monotonic() + timeout)
        if got is None:
            return None
        kind, ms = got[1]
        if kind != TIMESTAMP_LOG_APPEND_TIME:
            log.warning("%s topic does not use LogAppendTime: expiry cannot check its clock", self.topic)
            return None
        return (datetime.fromtimestamp(ms / 1000, UTC)
                + timedelta(seconds=self.settings.clock_offset_seconds))

    def expire(self) -> list[str]:
        """Tombstone every key (and proposal) whose period is past the grace window by both
        this keeper's clock and the broker's; tombstones not acknowledged are retried."""
        if not self._caught_up.wait(10.0):  # what is live is known only once the topic is read
            return []
        now = self.clock()
        with self._cond:
            due = [k for k in self._live if expired(k.split(":", 1)[0], now, self.grace)]
        if not due and not self._unconfirmed and time.monotonic() > self._roll_until:
            return []
        broker = self.broker_now()  # also the roll record
        if broker is None:
            return []  # no second opinion: never destroy a key on one possibly wrong clock
        now = min(now, broker)
        with self._cond:
            old = [k for k in due if expired(k.split(":", 1)[0], now, self.grace)]
            for k in old:
                self._live.pop(k, None)  # forget it now; the tombstone follows
        self._unconfirmed |= set(old)
        deadline = time.monotonic() + 10
        for k in sorted(self._unconfirmed):
            if self._produce(k, None, deadline) is not None:
                self._unconfirmed.discard(k)
                self._roll_until = time.monotonic() + max(ROLL_MIN_SECONDS,
                                                          ROLL_SEGMENTS * self.settings.key_shred_seconds)
                log.info("key %s on %s expired: tombstoned", k, self.topic)
        return old

    def known_periods(self) -> list[str]:
        with self._cond:
            return sorted({k.split(":", 1)[0] for k in self._live})
