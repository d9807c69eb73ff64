"""The stream worker: a Faust app that turns raw beacons into enriched pageviews.

Records between stages are *batches* (one Kafka record carries many events),
so Faust's per-record overhead is paid once per batch, not once per event.
Enriched pageviews are routed to the partition of their visitor, so every
visitor lives in exactly one partition of pageviews.enriched.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from typing import Any

import faust
from tally.schemas.codec import DecodeError, default_codec
from tally.streams.enrich import enrich
from tally.streams.salts import SaltKeeper

from tally.config import Settings

log = logging.getLogger(__name__)


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
        producer_acks=-1,
        datadir=str(settings.state_dir / "faust"),
    )
    codec = default_codec()
    raw = app.topic(settings.topic("beacons.raw"), value_serializer="raw", key_serializer="raw")
    enriched = app.topic(settings.topic("pageviews.enriched"), value_serializer="raw",
                         key_serializer="raw", partitions=settings.topic_partitions)
    salts = SaltKeeper(settings)

    @app.agent(raw)
    async def process_beacons(stream: Any) -> None:
        async for event in stream.events():
            try:
                batch = codec.decode("beacon_batch", event.value)
            except DecodeError as exc:
                log.warning("undecodable beacon batch at %s/%s: %s",
                            event.message.partition, event.message.offset, exc)
                continue
            by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
            for beacon in batch["items"]:
                salt = salts.salt_for(beacon["received_at"])
                pv = enrich(beacon, salt)
                by_partition[pv["visitor_id"] % settings.topic_partitions].append(pv)
            for partition, items in sorted(by_partition.items()):
                value = codec.encode("pageview_batch", {
                    "source_partition": event.message.partition,
                    "source_offset": event.message.offset,
                    "items": items,
                })
                await enriched.send(value=value, partition=partition)

    return app


def run(settings: Settings) -> None:
    app = make_app(settings)
    level = {"warning": "warn"}.get(settings.log_level, settings.log_level)
    app.main_argv = None  # noqa: B010 - faust reads sys.argv otherwise
    import sys

    sys.argv = ["tally-worker", "worker", "--loglevel", level, "--without-web"]
    app.main()
