"""The worker's window state and its changelogs: which topics hold them, how applied deltas
are packed into changelog records, how a partition's state is rebuilt from them, and when.

A partition's state is rebuilt as soon as the partition is assigned, not when its first
record arrives: a new owner must re-emit every window (`fold` marks them all dirty), and
the last owner may have been killed after committing its input but before its totals
timer ran. With a lazy rebuild, a partition with no new input would never re-emit, and its
totals would stand short for good.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import time
from collections.abc import Callable, Iterable, Iterator

from confluent_kafka import Consumer, TopicPartition
from tally.streams.watchdog import Watchdog
from tally.streams.windows import DAY_MS, Delta, PartitionState

from tally.config import Settings
from tally.kafka import consumer_config
from tally.topics import TopicChanges, ensure, state_topic

log = logging.getLogger(__name__)

KINDS = ("web", "product")


def state_topics(settings: Settings) -> dict[str, str]:
    return {kind: state_topic(settings, kind) for kind in KINDS}


def faust_topics(settings: Settings) -> dict[str, tuple[int, dict[str, str]]]:
    """The internal topic Faust would create by itself (its leader assignor's, one partition).
    Created beforehand with Tally's replication settings, so Faust only finds it."""
    return {f"{settings.app_id}-__assignor-__leader": (1, {})}


def ensure_state_topics(settings: Settings) -> TopicChanges:
    """The changelogs of the window state (one partition per input partition, kept for the
    longest window, a month, plus lateness; delete policy: records are deltas, not values)
    and Faust's internal topic, created or reconciled with the replication settings."""
    retention = str((35 + settings.allowed_lateness_hours // 24 + 1) * DAY_MS)
    changelog = {"cleanup.policy": "delete", "retention.ms": retention}
    wanted = {t: (settings.topic_partitions, changelog) for t in state_topics(settings).values()}
    return ensure(settings, {**wanted, **faust_topics(settings)})


def pack(deltas: list[Delta]) -> bytes:
    """One changelog record: several deltas (product events are one delta per input record)."""
    return pack_encoded([d.encode() for d in deltas])


def pack_encoded(encoded: list[bytes]) -> bytes:
    """pack() of deltas already encoded (stage 1 sends them encoded with each batch)."""
    return b"".join(struct.pack(">I", len(raw)) + raw for raw in encoded)


def unpack(data: bytes) -> Iterator[Delta]:
    at = 0
    while at < len(data):
        (n,) = struct.unpack_from(">I", data, at)
        yield Delta.decode(data[at + 4:at + 4 + n])
        at += 4 + n


def fold(partition: int, records: Iterable[bytes], open_after_ms: int | None = None,
         remember_after_ms: int | None = None) -> PartitionState:
    state = PartitionState(partition)
    for raw in records:
        for d in unpack(raw):
            state.apply(d, open_after_ms, remember_after_ms)
    state.dirty = dict(state.windows)  # re-emit everything after a recovery
    # (the sessions' changes are every session key the fold touched, removed ones included)
    return state


def read_changelog(settings: Settings, topic: str, partition: int,
                   progress: Callable[[], None] = lambda: None) -> list[bytes]:
    """Every record of one changelog partition, from the start to its current end.
    `progress` is called after every fetch (the watchdog sees a long rebuild move)."""
    c = Consumer(consumer_config(settings, f"{settings.app_id}-state-loader", **{"enable.partition.eof": True}))
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        if high <= low:
            return []
        c.assign([TopicPartition(topic, partition, low)])
        out: list[bytes] = []
        while True:
            msgs = c.consume(5000, timeout=0.2)
            progress()
            done = False
            for m in msgs:
                if m.error():
                    done = done or m.error().code() == -191  # _PARTITION_EOF
                    continue
                out.append(m.value())
                done = done or m.offset() >= high - 1
            if done:
                return out
    finally:
        c.close()


class StateStore:
    """The window state of the partitions this worker owns, for one kind (web or product).

    `assigned(p)` starts the rebuild in the background; `get(p)` waits for it (starting it
    if the assignment signal has not arrived yet); `revoked(p)` forgets the partition, so
    a later assignment rebuilds from the changelog instead of trusting a stale copy."""

    def __init__(self, kind: str, topic: str, load: Callable[[str, int], list[bytes]],
                 open_after_ms: Callable[[], int], remember_after_ms: Callable[[], int] | None = None) -> None:
        self.kind = kind
        self.topic = topic
        self._load = load
        self._open_after_ms = open_after_ms
        self._remember_after_ms = remember_after_ms or open_after_ms
        self.states: dict[int, PartitionState] = {}
        self._loading: dict[int, asyncio.Task[PartitionState]] = {}
        self.rebuild_seconds: dict[int, float] = {}  # the last rebuild of each held partition (/metrics)

    def assigned(self, partition: int) -> None:
        if partition not in self.states and partition not in self._loading:
            task = self._loading[partition] = asyncio.ensure_future(self._rebuild(partition))
            # Nobody may await a background rebuild: retrieve its end so it is never
            # reported as "exception never retrieved".
            task.add_done_callback(lambda t: t.cancelled() or t.exception())

    def revoked(self, partition: int) -> None:
        self.states.pop(partition, None)
        self.rebuild_seconds.pop(partition, None)
        self._loading.pop(partition, None)  # a rebuild still running is discarded when done

    async def get(self, partition: int) -> PartitionState:
        while True:
            st = self.states.get(partition)
            if st is not None:
                return st
            self.assigned(partition)
            try:
                return await asyncio.shield(self._loading[partition])
            except Revoked:
                continue  # revoked and assigned again meanwhile: wait for the new rebuild

    def loading(self) -> list[int]:
        return sorted(self._loading)

    async def _rebuild(self, partition: int) -> PartitionState:
        task = asyncio.current_task()
        delay = 0.5
        while True:
            t0 = time.monotonic()
            try:
                records = await asyncio.get_running_loop().run_in_executor(
                    None, self._load, self.topic, partition)
                st = fold(partition, records, self._open_after_ms(), self._remember_after_ms())
                break
            except Exception as exc:  # the broker is unreachable, say: try again, backing off
                log.warning("%s state of partition %d: rebuild failed (%s); retrying in %.1fs",
                            self.kind, partition, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                if self._loading.get(partition) is not task:
                    raise Revoked(partition) from None
        if self._loading.get(partition) is not task:
            raise Revoked(partition)  # revoked while loading: the copy is discarded
        self.states[partition] = st
        del self._loading[partition]
        self.rebuild_seconds[partition] = took = time.monotonic() - t0
        log.info("%s state of partition %d rebuilt from %d changelog records in %.2fs",
                 self.kind, partition, len(records), took)
        return st


class Revoked(Exception):
    """A partition was revoked while its state was being rebuilt."""


def state_stores(settings: Settings, watchdog: Watchdog, open_after_ms: Callable[[], int],
                 remember_after_ms: Callable[[], int] | None = None) -> dict[str, StateStore]:
    """The worker's window state of each kind, rebuilt from its changelog (the watchdog sees
    a rebuild as a wait that moves with every fetch)."""
    def store(kind: str) -> StateStore:
        def load(topic: str, partition: int) -> list[bytes]:
            with watchdog.waiting(f"{kind} state of partition {partition}: changelog rebuild") as touch:
                return read_changelog(settings, topic, partition, progress=touch)

        return StateStore(kind, state_topic(settings, kind), load, open_after_ms, remember_after_ms)

    return {kind: store(kind) for kind in KINDS}
