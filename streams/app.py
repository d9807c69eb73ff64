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
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import faust
from confluent_kafka import Producer
from tally.schemas.codec import DecodeError, default_codec
from tally.streams import beacons as stage1
from tally.streams import projection
from tally.streams.avro_bytes import writer_or_none
from tally.streams.outputs import Outputs
from tally.streams.product import product_delta
from tally.streams.salts import SaltKeeper, expired, period_key
from tally.streams.state import StateStore, ensure_state_topics, read_changelog, state_topics
from tally.streams.watchdog import Watchdog
from tally.streams.windows import (
    Delta,
    TotalsEncoder,
    pack,
    pack_encoded,
    pageview_delta,
)

from tally import health, topics
from tally.config import Settings
from tally.kafka import producer_config

log = logging.getLogger(__name__)

DELTA_HEADER = "tally-delta"  # header of a pageview_batch record: its windows.Delta, encoded
STALLED_EXIT = 75  # EX_TEMPFAIL: the watchdog found the worker stuck; restart it
CLOSE_MARGIN_MS = 3600_000  # windows are forgotten this long after their lateness bound
PRUNE_EVERY = 30  # flushes between two scans for windows to forget (a scan visits every window)


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
    read_beacons = projection.reader(codec, "beacon_batch")
    read_pageviews = projection.reader(codec, "pageview_batch", projection.PAGEVIEW_FIELDS)
    clock = Clock(settings)
    lateness_ms = min(settings.allowed_lateness_hours, settings.salt_grace_hours) * 3600_000
    cfg = stage1.Stage1Config(partitions=settings.topic_partitions, salt_period=settings.salt_period,
                              lateness_ms=lateness_ms, keep_user_agent=settings.keep_user_agent,
                              spam=load_spam_list(settings), raw_topic=settings.topic(topics.BEACONS_RAW))
    # The raw-bytes path (streams/avro_bytes.py) when the schemas have the shape it knows; else dicts.
    fast = writer_or_none(lambda c: stage1.FastStage1(c, cfg), codec)
    if fast is None:
        log.warning("beacon/pageview schemas changed shape: stage 1 uses the slower dict path")

    def topic(name: str, **kw: Any) -> faust.TopicT:
        return app.topic(name, value_serializer="raw", key_serializer="raw", **kw)

    raw = topic(settings.topic(topics.BEACONS_RAW))
    enriched = topic(settings.topic(topics.PAGEVIEWS_ENRICHED), partitions=settings.topic_partitions)
    product = topic(settings.topic(topics.PRODUCT_EVENTS))
    aggregates = topic(settings.topic(topics.AGGREGATES))  # written through librdkafka, see emit_totals
    drops = topic(settings.topic(topics.DROPS))
    bad_rows = topic(settings.topic(topics.BAD_ROWS))
    changelog_names = state_topics(settings)
    changelogs = {k: topic(v) for k, v in changelog_names.items()}

    stage_of_topic = {raw.get_topic_name(): "stage1-beacons", enriched.get_topic_name(): "stage2-windows",
                      product.get_topic_name(): "product-windows"}
    watchdog = Watchdog(settings.worker_stall_seconds, stage_of_topic)

    def open_after_ms() -> int:
        return clock.ms() - lateness_ms

    def state_store(kind: str) -> StateStore:
        def load(topic_name: str, partition: int) -> list[bytes]:
            with watchdog.waiting(f"{kind} state of partition {partition}: changelog rebuild") as touch:
                return read_changelog(settings, topic_name, partition, progress=touch)

        return StateStore(kind, changelog_names[kind], load, open_after_ms)

    stores = {"web": state_store("web"), "product": state_store("product")}
    store_of_topic = {enriched.get_topic_name(): stores["web"], product.get_topic_name(): stores["product"]}

    salts: dict[str, bytes] = {}
    keeper: list[SaltKeeper] = []

    async def salt_for(period: str) -> bytes | None:
        if period in salts:
            return salts[period]
        if not keeper:
            keeper.append(SaltKeeper(settings, clock=clock.now))
        with watchdog.waiting(f"the salt of period {period}"):
            salt = await asyncio.get_running_loop().run_in_executor(None, keeper[0].salt, period)
        if salt is not None:
            salts[period] = salt
        return salt

    # Outputs of a processed input record. With at-least-once they go through librdkafka and
    # are flushed before every Faust commit (streams/outputs.py); with exactly_once through
    # Faust, inside its transactions.
    outputs = Outputs(settings, watchdog) if settings.processing_guarantee != "exactly_once" else None

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

    async def test_hang(stage: str) -> None:  # test hook: this stage never finishes a record
        with watchdog.waiting(f"test hook TALLY_TEST_WORKER_HANG={stage}"):
            await asyncio.Event().wait()

    # -- stage 1: beacons.raw -> pageviews.enriched -----------------------------------------
    async def beacons_record(event: Any) -> None:
        p, o = event.message.partition, event.message.offset
        try:
            if fast is not None:
                body, items = fast.read(event.value)
            else:
                batch = read_beacons(event.value)
        except DecodeError as exc:
            log.warning("bad row: undecodable beacon batch at %d@%d: %s", p, o, exc)
            await send_bad(stage1.undecodable(event.value, exc, cfg, p, o))
            return
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

    @app.agent(raw, name="stage1-beacons")
    async def process_beacons(stream: Any) -> None:
        async for event in stream.events():
            if settings.test_worker_hang == "stage1-beacons":
                await test_hang("stage1-beacons")
            await beacons_record(event)
            watchdog.done(raw.get_topic_name(), event.message.partition, event.message.offset)

    # -- stage 2: pageviews.enriched partition p -> window state of p -> aggregates ----------
    async def windows_record(event: Any) -> None:
        p = event.message.partition
        st = await stores["web"].get(p)
        raw = delta_header(event.message.headers)
        try:
            delta = Delta.decode(raw) if raw is not None else None
        except Exception:  # a damaged header: the batch itself is the truth
            delta = raw = None
        if delta is None:
            try:
                delta = pageview_delta(read_pageviews(event.value))
            except DecodeError as exc:
                await send_bad(bad_row_of(enriched.get_topic_name(), event, exc))
                return
        if st.seen(delta.source_partition, delta.source_offset):
            return  # a replay of an input record already counted
        # The changelog record is sent before this event is acked; Faust flushes the
        # producer before committing offsets, so a committed batch is always in the log.
        await send_out(changelogs["web"], pack_encoded([raw]) if raw else pack([delta]), p)
        st.apply(delta, open_after_ms=open_after_ms())

    @app.agent(enriched, name="stage2-windows")
    async def count_windows(stream: Any) -> None:
        # One batch at a time. (stream.take_events, one changelog record per chunk, was ~10%
        # faster but once left a newly joined worker stalled in the scaling test.)
        async for event in stream.events():
            if settings.test_worker_hang == "stage2-windows":
                await test_hang("stage2-windows")
            await windows_record(event)
            watchdog.done(enriched.get_topic_name(), event.message.partition, event.message.offset)

    # -- product telemetry ------------------------------------------------------------------
    async def product_record(event: Any) -> None:
        p, o = event.message.partition, event.message.offset
        st = await stores["product"].get(p)
        if st.seen(p, o):
            return
        delta, bad = product_delta(codec, event.value, product.get_topic_name(), p, o,
                                   clock.ms(), lateness_ms)
        if bad is not None:
            await send_bad(bad)
        await send_out(changelogs["product"], pack([delta]), p)
        st.apply(delta, open_after_ms=open_after_ms())

    @app.agent(product, name="product-windows")
    async def count_product(stream: Any) -> None:
        async for event in stream.events():
            if settings.test_worker_hang == "product-windows":
                await test_hang("product-windows")
            await product_record(event)
            watchdog.done(product.get_topic_name(), event.message.partition, event.message.offset)

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

    @app.timer(settings.totals_flush_seconds)
    async def emit_totals() -> None:
        if not totals_producer:
            totals_producer.append(Producer(producer_config(settings)))
            atexit.register(totals_producer[0].flush, 5)  # graceful stop: deliver the last totals
        producer = totals_producer[0]
        name = aggregates.get_topic_name()
        flushes[0] += 1
        prune = flushes[0] % PRUNE_EVERY == 0
        closed_before = clock.ms() - lateness_ms - CLOSE_MARGIN_MS
        for store in stores.values():
            for st in list(store.states.values()):
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
            await asyncio.get_running_loop().run_in_executor(None, keeper[0].expire)
        grace = timedelta(hours=settings.salt_grace_hours)
        for period in [k for k in salts if expired(k, clock.now(), grace)]:
            del salts[period]  # forward secrecy applies to this process's memory too

    @app.timer(watchdog_interval(settings))
    async def watch() -> None:
        held = [tp for tp in app.consumer.assignment() if tp.topic in stage_of_topic]
        # End offsets through aiokafka (Faust's consumer). Not librdkafka's admin client: its
        # coordinator requests can abort the process when the broker goes away
        # (confluentinc/librdkafka#4605).
        try:
            ends = {(tp.topic, tp.partition): end for tp, end in
                    (await asyncio.wait_for(app.consumer.highwaters(*held), 10)).items()} if held else {}
        except Exception as exc:  # the broker is unreachable: that is an outage, not a stall
            log.warning("watchdog: end offsets unavailable (%s)", exc or type(exc).__name__)
            return
        # Faust's record of this member's commits: where an unprocessed partition starts.
        commits = getattr(app.consumer, "_committed_offset", {})
        committed = {(tp.topic, tp.partition): commits.get(tp) for tp in held}
        stall = watchdog.check(ends, committed)
        report = {"state": "ok", "held": len(held), "lag": watchdog.lag(ends, committed),
                  "waiting_for": watchdog.waits(),
                  "rebuilding": {k: s.loading() for k, s in stores.items() if s.loading()}}
        if stall is not None:
            log.critical("stalled: %s; exiting (status %d) so a supervisor restarts the worker",
                         stall.describe(), STALLED_EXIT)
            health.write(settings, "worker", {**report, "state": "stalled", "detail": stall.describe()})
            logging.shutdown()
            os._exit(STALLED_EXIT)
        health.write(settings, "worker", report)

    @app.on_partitions_assigned.connect
    async def rebuild_assigned(app: Any, assigned: Any, **_: Any) -> None:
        # Rebuild (and so re-emit) every assigned partition's windows now, not on its first
        # record: see streams/state.py for the stall this prevents.
        for tp in assigned:
            store = store_of_topic.get(tp.topic)
            if store is not None:
                store.assigned(tp.partition)
        watchdog.assigned([(tp.topic, tp.partition) for tp in assigned if tp.topic in stage_of_topic])

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: Any, revoked: Any, **_: Any) -> None:
        # Another worker may own these partitions next and move their state on; when
        # they come back we rebuild from the changelog instead of trusting a stale copy.
        for tp in revoked:
            store = store_of_topic.get(tp.topic)
            if store is not None:
                store.revoked(tp.partition)
        watchdog.revoked([(tp.topic, tp.partition) for tp in revoked])

    app.tally_period_key = period_key  # type: ignore[attr-defined]
    return app


def watchdog_interval(settings: Settings) -> float:
    """How often the watchdog looks: often enough to act within ~1/4 of the stall time."""
    return max(0.5, min(10.0, settings.worker_stall_seconds / 4)) if settings.worker_stall_seconds else 10.0


def delta_header(headers: Any) -> bytes | None:
    for k, v in headers or ():
        if k == DELTA_HEADER:
            return v
    return None


def bad_row_of(topic: str, event: Any, exc: Exception) -> dict[str, Any]:
    from tally.schemas.reasons import BadRowReason, Component
    from tally.schemas.records import bad_row

    return bad_row(BadRowReason.UNDECODABLE, str(exc), Component.WORKER, topic, event.message.partition,
                   event.message.offset, event.value)


def run(settings: Settings) -> None:
    import sys


    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    # Load the UA pattern sets now (a few seconds), not on the first batch.
    from tally.streams.enrich import agent_info

    agent_info("Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0")
    agent_info("curl/8.0")
    topics.ensure_topics(settings)
    ensure_state_topics(settings)
    app = make_app(settings)
    level = {"warning": "warn"}.get(settings.log_level, settings.log_level)
    sys.argv = ["tally-worker", "worker", "--loglevel", level, "--without-web"]
    app.main()
