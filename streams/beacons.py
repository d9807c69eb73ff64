"""Stage 1: one beacons.raw record (a beacon_batch) -> pageview batches per visitor partition,
drop counts and bad rows. Plain Python over the whole batch; no Kafka here.

The pipeline is a list of named steps, in order, and the first drop wins:

    decode -> too_late -> datacenter -> empty UA / headless / bot -> referrer_spam -> salt -> enrich

Given the same salts, the output is a pure function of the input record, so a replayed
record yields identical pageview batches (stage 2 relies on this to skip replays).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from tally.schemas.codec import Codec, DecodeError
from tally.streams.badrows import bad_row, drop_counts
from tally.streams.enrich import agent_info, enrich, is_spam_referrer, referrer_host
from tally.streams.salts import period_key

DAY_MS = 86_400_000


@dataclass
class Stage1Config:
    partitions: int  # of pageviews.enriched
    salt_period: str
    lateness_ms: int
    keep_user_agent: bool = False
    spam: frozenset[str] = frozenset()
    raw_topic: str = "beacons.raw"


@dataclass
class Stage1Result:
    enriched: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, pageview_batch)
    drops: list[dict[str, Any]] = field(default_factory=list)
    bad_rows: list[dict[str, Any]] = field(default_factory=list)
    accepted: int = 0


@lru_cache(maxsize=4096)
def _day(day_index: int) -> tuple[date, str, str]:
    """(date, day period key, month period key) of a day number since the epoch."""
    d = datetime.fromtimestamp(day_index * 86400, UTC)
    return d.date(), period_key(d, "day"), period_key(d, "month")


def period_of(ms: int, salt_period: str) -> str:
    day = _day(ms // DAY_MS)
    return day[1] if salt_period == "day" else day[2]


def periods_needed(batch: dict[str, Any], cfg: Stage1Config, now_ms: int) -> set[str]:
    """Salt periods this batch will hash with (items not already too late). Items come from
    a fastread reader: received_at in epoch ms."""
    oldest = now_ms - cfg.lateness_ms
    return {period_of(ms, cfg.salt_period) for ms in {b["received_at"] for b in batch["items"]} if ms >= oldest}


def process_batch(codec: Codec, batch: dict[str, Any], partition: int, offset: int,
                  salts: dict[str, bytes | None], cfg: Stage1Config, now_ms: int) -> Stage1Result:
    out = Stage1Result()
    drops: dict[tuple[str, date, str], int] = defaultdict(int)
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    oldest = now_ms - cfg.lateness_ms
    for i, b in enumerate(batch["items"]):
        received: int = b["received_at"]
        if received < oldest:
            when = datetime.fromtimestamp(received / 1000, UTC).isoformat()
            out.bad_rows.append(_item_bad_row(codec, b, "too_late", f"item {i}: received_at {when} "
                                              f"is older than the allowed lateness", cfg, partition, offset))
            continue
        day = _day(received // DAY_MS)[0]
        if b.get("datacenter"):
            drops[(b["site"], day, "datacenter")] += 1
            continue
        info = agent_info(b.get("user_agent") or "")
        if info.verdict.bot:
            drops[(b["site"], day, info.verdict.reason or "bot")] += 1
            continue
        if cfg.spam and is_spam_referrer(referrer_host(b.get("referrer")), cfg.spam):
            drops[(b["site"], day, "referrer_spam")] += 1
            continue
        salt = salts.get(period_of(received, cfg.salt_period))
        if salt is None:  # never hash unsalted
            out.bad_rows.append(_item_bad_row(codec, b, "no_salt", f"item {i}: no salt for period "
                                              f"{period_of(received, cfg.salt_period)}", cfg, partition, offset))
            continue
        pv = enrich(b, salt, info, cfg.keep_user_agent)
        by_partition[pv["visitor_id"] % cfg.partitions].append(pv)
        out.accepted += 1
    for p, items in sorted(by_partition.items()):
        out.enriched.append((p, codec.encode("pageview_batch", {
            "source_partition": partition, "source_offset": offset, "items": items})))
    out.drops = drop_counts(drops, partition, offset)
    return out


def _item_bad_row(codec: Codec, beacon: dict[str, Any], reason: str, detail: str, cfg: Stage1Config,
                  partition: int, offset: int) -> dict[str, Any]:
    # The original record holds other, good beacons: keep exactly this one, re-encoded as a
    # one-item beacon_batch, so it can be replayed on its own.
    return bad_row(reason, detail, cfg.raw_topic, partition, offset,
                   codec.encode("beacon_batch", {"items": [beacon]}))


def undecodable(value: bytes, exc: DecodeError, cfg: Stage1Config, partition: int, offset: int) -> dict[str, Any]:
    return bad_row("undecodable", str(exc), cfg.raw_topic, partition, offset, bytes(value or b""))
