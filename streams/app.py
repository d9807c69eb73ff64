"""`tally worker`: one Faust app, read top-down: its topics, three agents that hand each
record to a stage and emit what it returns, three timers, the metrics endpoint and the
rebalance hooks.

    beacons.raw ──BeaconStage──▶ pageviews.enriched (partition = visitor % N) ──WindowStage──▶ window state
        └─▶ drops, bad-rows                                                      └─▶ <app>-web-state (changelog)
    product.events ──ProductStage──▶ product window state ─▶ <app>-product-state (changelog), bad-rows
    every TALLY_TOTALS_FLUSH_SECONDS: the totals of changed windows ─▶ aggregates

The stages are in streams/stages.py; window state, changelogs and rebuilds in state.py;
outputs and totals in outputs.py; stall detection in watchdog.py and liveness.py; /metrics in
exporter.py.
Exactness (docs/streams.md): the window state skips replays, and every applied delta is in
its changelog before Faust commits the input. Worker group id = TALLY_APP_ID.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from typing import Any

import faust
from tally.schemas.codec import default_codec
from tally.streams import exporter, liveness
from tally.streams.metrics import WorkerCounts
from tally.streams.outputs import Out, Outputs, Totals
from tally.streams.salts import SaltCache
from tally.streams.stages import BeaconStage, Clock, In, ProductStage, Stage, WindowStage
from tally.streams.state import ensure_state_topics, state_stores
from tally.streams.watchdog import Watchdog

from tally import topics
from tally.config import Settings


def make_app(settings: Settings, replication_factor: int | None = None) -> faust.App:
    """The worker's Faust app. replication_factor: of the topics Faust creates (the
    setting's, or the cluster's default, see topics.effective_replication_factor)."""
    app = faust_app(settings, replication_factor)
    codec, clock, counts = default_codec(settings), Clock(settings), WorkerCounts()

    def topic(name: str, **kw: Any) -> faust.TopicT:
        return app.topic(settings.topic(name), value_serializer="raw", key_serializer="raw", **kw)

    raw, product = topic(topics.BEACONS_RAW), topic(topics.PRODUCT_EVENTS)
    enriched = topic(topics.PAGEVIEWS_ENRICHED, partitions=settings.topic_partitions)
    names = {raw: BeaconStage.name, enriched: WindowStage.name, product: ProductStage.name}
    watchdog = Watchdog(settings.worker_stall_seconds, {t.get_topic_name(): n for t, n in names.items()})
    stores = state_stores(settings, watchdog, clock.open_after_ms, clock.remember_after_ms)
    store_of = {enriched.get_topic_name(): stores["web"], product.get_topic_name(): stores["product"]}
    salts = SaltCache(settings, clock.now, watchdog)
    stages = {raw: BeaconStage(settings, codec, clock, salts, counts),
              enriched: WindowStage(settings, codec, clock, stores["web"], counts),
              product: ProductStage(settings, codec, clock, stores["product"], counts)}
    totals = Totals(settings, codec, stores, clock.open_after_ms, clock.remember_after_ms)
    # At least once (the default): outputs through librdkafka, delivered before every Faust
    # commit (outputs.py). Exactly once: through Faust, inside its transactions.
    outputs = Outputs(settings, watchdog) if settings.processing_guarantee != "exactly_once" else None
    if outputs is not None:
        app.producer = outputs.faust_producer(app)
    sends: dict[str, faust.TopicT] = {}

    async def emit(records: list[Out]) -> None:
        for o in records:
            if outputs is not None:
                outputs.produce(o.topic, o.value, o.partition, key=o.key, headers=o.headers)
                continue
            if o.topic not in sends:
                sends[o.topic] = app.topic(o.topic, value_serializer="raw", key_serializer="raw")
            await sends[o.topic].send(key=o.key, value=o.value, partition=o.partition, headers=o.headers)

    def agent(topic: faust.TopicT, stage: Stage) -> None:
        async def run_stage(stream: Any) -> None:
            async for event in stream.events():
                if settings.test_worker_hang == stage.name:  # test hook: this stage never finishes a record
                    with watchdog.waiting(f"test hook TALLY_TEST_WORKER_HANG={stage.name}"):
                        await asyncio.Event().wait()
                await emit(await stage.handle(In.of(event)))
                watchdog.done(event.message.topic, event.message.partition, event.message.offset)

        app.agent(topic, name=stage.name)(run_stage)

    for topic_, stage in stages.items():
        agent(topic_, stage)

    @app.timer(settings.totals_flush_seconds)
    async def emit_totals() -> None:
        await totals.flush()

    about: dict[str, Any] = {}  # for the health report: where the metrics are served
    keep_time(app, clock, salts, about)

    @app.task
    async def serve_metrics() -> None:
        served = exporter.serve(settings, exporter.WorkerCollector(counts, watchdog, stores))
        about.update(metrics=served[0] if served else None)

    @app.timer(liveness.interval(settings))
    async def watch() -> None:
        about.update(salts=salts.status())  # which periods have a salt (never a value)
        await liveness.check(settings, app, watchdog, stores, about)

    @app.on_partitions_assigned.connect
    async def rebuild_assigned(app: Any, assigned: Any, **_: Any) -> None:
        # Rebuild (and so re-emit) every assigned partition's windows now, not on its first
        # record: see streams/state.py for the stall this prevents.
        for tp in assigned:
            if tp.topic in store_of:
                store_of[tp.topic].assigned(tp.partition)
        watchdog.assigned([(tp.topic, tp.partition) for tp in assigned if tp.topic in watchdog.stages])

    @app.on_partitions_revoked.connect
    async def forget_revoked(app: Any, revoked: Any, **_: Any) -> None:
        # Another worker may own these partitions next and move their state on; when they
        # come back they are rebuilt from the changelog instead of trusting a stale copy.
        for tp in revoked:
            if tp.topic in store_of:
                store_of[tp.topic].revoked(tp.partition)
        watchdog.revoked([(tp.topic, tp.partition) for tp in revoked])

    return app


def faust_app(settings: Settings, replication_factor: int | None = None) -> faust.App:
    # One URL per host, not Tally's comma list as one string: Faust releases before
    # faust-streaming#486 split that string on ";" only.
    app = faust.App(settings.app_id, broker=[f"kafka://{host}" for host in settings.bootstrap_hosts],
                    topic_replication_factor=replication_factor or settings.replication_factor or 1,
                    store="memory://", web_enabled=False,
                    topic_partitions=settings.topic_partitions, consumer_auto_offset_reset="earliest",
                    broker_session_timeout=6.0, broker_heartbeat_interval=1.0, broker_commit_interval=1.0,
                    producer_acks=-1, processing_guarantee=settings.processing_guarantee,
                    datadir=str(settings.state_dir / "faust"))

    @app.task
    async def quiet_client_logs() -> None:
        # aiokafka and Faust log every produced record at DEBUG; keep them at INFO or above
        # whatever the root level is (those debug calls cost ~5% of the worker's time).
        for name in ("aiokafka", "faust.topics", "faust.transport"):
            logging.getLogger(name).setLevel(max(logging.INFO, logging.getLogger().level))

    return app


def run(settings: Settings) -> None:
    from tally.streams.enrich import agent_info

    (settings.state_dir / "faust").mkdir(parents=True, exist_ok=True)
    # Load the UA pattern sets now (a few seconds), not on the first batch.
    agent_info("Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0")
    agent_info("curl/8.0")
    topics.ensure_topics(settings)
    ensure_state_topics(settings)
    app = make_app(settings, topics.effective_replication_factor(settings))
    # The window and session state is millions of long-lived objects, and stage 2 allocates
    # a few per event: at the default 700 allocations per young pass the collector cost
    # ~6 us per event with sessions on. Ten times fewer passes free the same objects; what
    # was loaded at start is never garbage, so it is kept out of the passes altogether.
    gc.freeze()
    gc.set_threshold(7000, 10, 10)
    level = {"warning": "warn"}.get(settings.log_level, settings.log_level)
    sys.argv = ["tally-worker", "worker", "--loglevel", level, "--without-web"]
    app.main()


def keep_time(app: faust.App, clock: Clock, salts: SaltCache, about: dict[str, Any]) -> None:
    """The salt keeper, and the worker's clock held back to the broker's if it ran ahead
    (stages.Clock): checked before the first record (its lateness, windows and salt are
    judged by it) and every minute."""

    @app.task
    async def start_salts() -> None:
        await salts.expire()  # starts the keeper with the worker, not at its first beacon

    @app.timer(60.0)
    async def expire_salts() -> None:
        await salts.expire()

    @app.on_before_shutdown.connect
    async def close_salts(app: Any, **_: Any) -> None:
        # Its consumer thread logs through Python: closed here, not left to the interpreter's exit.
        await asyncio.get_running_loop().run_in_executor(None, salts.close)

    def check_clock() -> None:
        local = clock.local()
        clock.agree(local, salts.start().broker_now())
        about.update(clock_ahead_seconds=round(clock.ahead.total_seconds()))

    @app.timer(60.0)
    async def recheck_clock() -> None:
        await asyncio.get_running_loop().run_in_executor(None, check_clock)

    check_clock()
