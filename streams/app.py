"""`tally worker`: one Faust app, two stages, read top-down.

    beacons.raw ──stage 1──▶ pageviews.enriched (partition = visitor % N) ──stage 2──▶ aggregates
        │  decode, drop bots, salt+hash, enrich                       window state of partition p
        └─▶ drops, bad-rows                                                 └─▶ <app>-web-state (changelog)
    product.events ──product stage──▶ aggregates (family/day, active workspaces), bad-rows
                                          └─▶ <app>-product-state (changelog)

Records between stages are batches, so Faust's per-record cost (100-400 us) is paid once
per batch. Each batch is processed in plain Python (streams/beacons.py, windows.py).

Exactness (docs/streams.md): stage 2 keeps, per partition, the highest source offset applied
per source partition and skips replays; every applied delta goes to a changelog topic before
Faust commits the input offset (Faust flushes the producer before each commit), and a new
owner of a partition rebuilds its state from that changelog. Worker group id = TALLY_APP_ID.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import NewTopic
from tally.schemas.codec import DecodeError, default_codec
from tally.streams import beacons as stage1
from tally.streams import fastread
from tally.streams.outputs import Outputs
from tally.streams.product import product_delta
from tally.streams.salts import SaltKeeper, expired, period_key
from tally.streams.windows import (
    DAY_MS,
    Delta,
    PartitionState,
    TotalsEncoder,
    fold,
    pack,
    pack_encoded,
    pageview_delta,
)
from tally.streams.wire import writer_or_none

from tally.config import Settings
from tally.kafka import consumer_config, producer_config
from tally.topics import admin

log = logging.getLogger(__name__)

DELTA_HEADER = "tally-delta"  # header of a pageview_batch record: its windows.Delta, encoded
FLUSH_SECONDS = 2.0  # how often the totals of changed windows are emitted
CLOSE_MARGIN_MS = 3600_000  # windows are forgotten this long after their lateness bound
PRUNE_EVERY = 30  # flushes between two scans for windows to forget (a scan visits every window)


def state_topics(settings: Settings) -> dict[str, str]:
    return {"web": settings.topic(f"{settings.app_id}-web-state"),
            "product": settings.topic(f"{settings.app_id}-product-state")}


def ensure_state_topics(settings: Settings) -> None:
    """The changelogs of the window state: one partition per input partition, kept for the
    longest window (a month) plus lateness. Delete policy: records are deltas, not values."""
    client = admin(settings)
    existing = set(client.list_topics(timeout=30).topics)
    retention = str((35 + settings.allowed_lateness_hours // 24 + 1) * DAY_MS)
    new = [NewTopic(t, num_partitions=settings.topic_partitions, replication_factor=-1,
                    config={"cleanup.policy": "delete", "retention.ms": retention})
           for t in state_topics(settings).values() if t not in existing]
    for fut in (client.create_topics(new).values() if new else []):
        try:
            fut.result()
        except Exception as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise


def read_changelog(settings: Settings, topic: str, partition: int) -> list[bytes]:
    """Every record of one changelog partition, from the start to its current end."""
    c = Consumer(consumer_config(settings, f"{settings.app_id}-state-loader", **{"enable.partition.eof": True}))
    try:
        low, high = c.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
        if high <= low:
            return []
        c.assign([TopicPartition(topic, partition, low)])
        out: list[bytes] = []
        while True:
            msgs = c.consume(5000, timeout=0.2)
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


class Clock:
    def __init__(self, settings: Settings) -> None:
        self.offset = timedelta(seconds=settings.clock_offset_seconds)

    def now(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def ms(self) -> int:
        return int(self.now().timestamp() * 1000)


def load_spam_list(settings: Settings) -> frozenset[str]:
    if not settings.referrer_spam_file:
        return frozenset()
    lines = Path(settings.referrer_spam_file).read_text().splitlines()
    return frozenset(x.strip().lower() for x in lines if x.strip() and not x.startswith("#"))


def make_app(settings: Settings) -> faust.App:
    app = faust.App(
        settings.app_id,
        broker=f"kafka://{settings.bootstrap}",
        store="memory://",
        web_enabled=False,
        topic_partitions=settings.topic_partitions,
        consumer_auto_offset_reset="earliest",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        broker_commit_interval=1.0,
        producer_acks=-1,
        processing_guarantee=settings.processing_guarantee,
        datadir=str(settings.state_dir / "faust"),
    )
    codec = default_codec(settings)
    read_beacons = fastread.reader(codec, "beacon_batch")
    read_pageviews = fastread.reader(codec, "pageview_batch", fastread.PAGEVIEW_FIELDS)
    clock = Clock(settings)
    lateness_ms = min(settings.allowed_lateness_hours, settings.salt_grace_hours) * 3600_000
    cfg = stage1.Stage1Config(partitions=settings.topic_partitions, salt_period=settings.salt_period,
                              lateness_ms=lateness_ms, keep_user_agent=settings.keep_user_agent,
                              spam=load_spam_list(settings), raw_topic=settings.topic("beacons.raw"))
    # The raw-bytes path (streams/wire.py) when the schemas have the shape it knows; else dicts.
    fast = writer_or_none(lambda c: stage1.FastStage1(c, cfg), codec)
    if fast is None:
        log.warning("beacon/pageview schemas changed shape: stage 1 uses the slower dict path")

    def topic(name: str, **kw: Any) -> faust.TopicT:
        return app.topic(name, value_serializer="raw", key_serializer="raw", **kw)

    raw = topic(settings.topic("beacons.raw"))
    enriched = topic(settings.topic("pageviews.enriched"), partitions=settings.topic_partitions)
    product = topic(settings.topic("product.events"))
    aggregates = topic(settings.topic("aggregates"))  # written through librdkafka, see emit_totals
    drops = topic(settings.topic("drops"))
    bad_rows = topic(settings.topic("bad-rows"))
    changelog_names = state_topics(settings)
    changelogs = {k: topic(v) for k, v in changelog_names.items()}

    salts: dict[str, bytes] = {}
    keeper: list[SaltKeeper] = []
    states: dict[str, dict[int, PartitionState]] = {"web": {}, "product": {}}
    loop_exec = None

    async def salt_for(period: str) -> bytes | None:
        if period in salts:
            return salts[period]
        if not keeper:
            keeper.append(SaltKeeper(settings, clock=clock.now))
        salt = await asyncio.get_running_loop().run_in_executor(loop_exec, keeper[0].salt, period)
        if salt is not None:
            salts[period] = salt
        return salt

    async def state_of(kind: str, partition: int) -> PartitionState:
        st = states[kind].get(partition)
        if st is None:
            t0 = time.monotonic()
            records = await asyncio.get_running_loop().run_in_executor(
                loop_exec, read_changelog, settings, changelog_names[kind], partition)
            st = states[kind][partition] = fold(partition, records, open_after_ms=clock.ms() - lateness_ms)
            log.info("%s state of partition %d rebuilt from %d changelog records in %.2fs",
                     kind, partition, len(records), time.monotonic() - t0)
        return st

    # Outputs of a processed input record. With at-least-once they go through librdkafka and
    # are flushed before every Faust commit (streams/outputs.py); with exactly_once through
    # Faust, inside its transactions.
    outputs = Outputs(settings) if settings.processing_guarantee != "exactly_once" else None

    async def send_out(topic: faust.TopicT, value: bytes, partition: int | None = None,
                       headers: list[tuple[str, bytes]] | None = None, key: bytes | None = None) -> None:
        if outputs is None:
            await topic.send(key=key, value=value, partition=partition, headers=headers)
            return
        if not outputs.attached:
            outputs.attach(app)
        outputs.produce(topic.get_topic_name(), value, partition, key=key, headers=headers)

    async def send_bad(row: dict[str, Any]) -> None:
        await send_out(bad_rows, codec.encode("bad_row", row))

    # -- stage 1: beacons.raw -> pageviews.enriched -----------------------------------------
    @app.agent(raw, name="stage1-beacons")
    async def process_beacons(stream: Any) -> None:
        async for event in stream.events():
            p, o = event.message.partition, event.message.offset
            try:
                if fast is not None:
                    body, items = fast.read(event.value)
                else:
                    batch = read_beacons(event.value)
            except DecodeError as exc:
                log.warning("bad row: undecodable beacon batch at %d@%d: %s", p, o, exc)
                await send_bad(stage1.undecodable(event.value, exc, cfg, p, o))
                continue
            now_ms = clock.ms()
            if fast is not None:
                period_salts = {k: await salt_for(k) for k in fast.periods_needed(items, now_ms)}
                out = fast.process(body, items, p, o, period_salts, now_ms)
            else:
                period_salts = {k: await salt_for(k) for k in stage1.periods_needed(batch, cfg, now_ms)}
                out = stage1.process_batch(codec, batch, p, o, period_salts, cfg, now_ms)
            for partition, value in out.enriched:
                # The batch's window delta rides along as a header: stage 2 applies it without
                # decoding the pageviews (it decodes them only when the header is missing).
                await send_out(enriched, value, partition, [(DELTA_HEADER, out.deltas[partition])])
            for d in out.drops:
                await send_out(drops, codec.encode("drop_count", d), key=d["site"].encode())
            for row in out.bad_rows:
                await send_bad(row)

    # -- stage 2: pageviews.enriched partition p -> window state of p -> aggregates ----------
    @app.agent(enriched, name="stage2-windows")
    async def count_windows(stream: Any) -> None:
        # One batch at a time. (stream.take_events, one changelog record per chunk, was ~10%
        # faster but once left a newly joined worker stalled in the scaling test.)
        async for event in stream.events():
            p = event.message.partition
            st = await state_of("web", p)
            raw = delta_header(event.message.headers)
            try:
                delta = Delta.decode(raw) if raw is not None else None
            except Exception:  # a damaged header: the batch itself is the truth
                delta = raw = None
            if delta is None:
                try:
                    delta = pageview_delta(read_pageviews(event.value))
                except DecodeError as exc:
                    await send_bad(bad_row_of(settings.topic("pageviews.enriched"), event, exc))
                    continue
            if st.seen(delta.source_partition, delta.source_offset):
                continue  # a replay of an input record already counted
            # The changelog record is sent before this event is acked; Faust flushes the
            # producer before committing offsets, so a committed batch is always in the log.
            await send_out(changelogs["web"], pack_encoded([raw]) if raw else pack([delta]), p)
            st.apply(delta, open_after_ms=clock.ms() - lateness_ms)

    # -- product telemetry ------------------------------------------------------------------
    @app.agent(product, name="product-windows")
    async def count_product(stream: Any) -> None:
        async for event in stream.events():
            p, o = event.message.partition, event.message.offset
            st = await state_of("product", p)
            if st.seen(p, o):
                continue
            delta, bad = product_delta(codec, event.value, settings.topic("product.events"), p, o,
                                       clock.ms(), lateness_ms)
            if bad is not None:
                await send_bad(bad)
            await send_out(changelogs["product"], pack([delta]), p)
            st.apply(delta, open_after_ms=clock.ms() - lateness_ms)

    @app.task
    async def quiet_client_logs() -> None:
        # aiokafka and Faust log every produced record at DEBUG; keep them at INFO or above
        # whatever the root level is (those debug calls cost ~5% of the worker's time).
        for name in ("aiokafka", "faust.topics", "faust.transport"):
            logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))

    # Window totals go through librdkafka, not Faust: a flush can carry thousands of them,
    # and their order relative to offset commits does not matter (a new owner of a
    # partition re-emits every window; the version tells old totals from new ones).
    totals_producer: list[Producer] = []

    encode_total = TotalsEncoder(codec)
    flushes = [0]

    @app.timer(FLUSH_SECONDS)
    async def emit_totals() -> None:
        if not totals_producer:
            totals_producer.append(Producer(producer_config(settings)))
            atexit.register(totals_producer[0].flush, 5)  # graceful stop: deliver the last totals
        producer = totals_producer[0]
        name = aggregates.get_topic_name()
        flushes[0] += 1
        prune = flushes[0] % PRUNE_EVERY == 0
        closed_before = clock.ms() - lateness_ms - CLOSE_MARGIN_MS
        for by_partition in states.values():
            for st in list(by_partition.values()):
                for key, w in st.take_dirty_windows():
                    agg_key, value = encode_total(st, key, w)
                    while True:
                        try:
                            producer.produce(name, key=agg_key, value=value)
                            break
                        except BufferError:
                            producer.poll(0.05)
                if prune:
                    st.prune(closed_before)
                await asyncio.sleep(0)  # let the agents run between partitions
        producer.poll(0)

    @app.timer(60.0)
    async def expire_salts() -> None:
        if keeper:
            await asyncio.get_running_loop().run_in_executor(loop_exec, keeper[0].expire)
        grace = timedelta(hours=settings.salt_grace_hours)
        for period in [k for k in salts if expired(k, clock.now(), grace)]:
            del salts[period]  # forward secrecy applies to this process's memory too

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: Any, revoked: Any, **_: Any) -> None:
        # Another worker may own these partitions next and move their state on; when
        # they come back we rebuild from the changelog instead of trusting a stale copy.
        for tp in revoked:
            kind = {enriched.get_topic_name(): "web", product.get_topic_name(): "product"}.get(tp.topic)
            if kind:
                states[kind].pop(tp.partition, None)

    app.tally_period_key = period_key  # type: ignore[attr-defined]
    return app


def delta_header(headers: Any) -> bytes | None:
    for k, v in headers or ():
        if k == DELTA_HEADER:
            return v
    return None


def bad_row_of(topic: str, event: Any, exc: Exception) -> dict[str, Any]:
    from tally.streams.badrows import bad_row

    return bad_row("undecodable", str(exc), topic, event.message.partition, event.message.offset,
                   bytes(event.value or b""))


def run(settings: Settings) -> None:
    import sys

    from tally.topics import ensure_topics

    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    # Load the UA pattern sets now (a few seconds), not on the first batch.
    from tally.streams.enrich import agent_info

    agent_info("Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0")
    agent_info("curl/8.0")
    ensure_topics(settings)
    ensure_state_topics(settings)
    app = make_app(settings)
    level = {"warning": "warn"}.get(settings.log_level, settings.log_level)
    sys.argv = ["tally-worker", "worker", "--loglevel", level, "--without-web"]
    app.main()
