"""Stage 1: one beacons.raw record (a beacon_batch) -> pageview batches per visitor partition,
drop counts and bad rows. Plain Python over the whole batch; no Kafka here.

The pipeline is a list of named steps, in order, and the first drop wins:

    decode -> too_late -> datacenter -> empty UA / headless / bot -> referrer_spam -> salt -> enrich

Given the same salts, the output is a pure function of the input record, so a replayed
record yields identical pageview batches (stage 2 relies on this to skip replays).
"""

from __future__ import annotations

import hashlib
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from tally.schemas.codec import Codec, DecodeError
from tally.schemas.reasons import BadRowReason, Component, DropReason
from tally.schemas.records import bad_row, drop_count
from tally.streams.avro_bytes import BeaconReader, PageviewWriter, RawBeacon, zigzag_varints
from tally.streams.enrich import (
    VISITOR_DIGEST_BYTES,
    AgentInfo,
    agent_info,
    enrich,
    is_spam_referrer,
    normalize_path,
    referrer_host,
    referrer_source,
)
from tally.streams.salts import period_key
from tally.streams.windows import pageview_delta, window_delta

from tally.caches import bounded_put
from tally.topics import BEACONS_RAW

DAY_MS = 86_400_000


@dataclass
class Stage1Config:
    partitions: int  # of pageviews.enriched
    salt_period: str
    lateness_ms: int
    keep_user_agent: bool = False
    spam: frozenset[str] = frozenset()
    raw_topic: str = BEACONS_RAW


@dataclass
class Stage1Result:
    enriched: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, pageview_batch)
    drops: list[dict[str, Any]] = field(default_factory=list)
    bad_rows: list[dict[str, Any]] = field(default_factory=list)
    accepted: int = 0
    # partition -> the stage-2 delta of that partition's batch (windows.Delta bytes): it rides
    # with the batch as a record header, so stage 2 need not decode the pageviews again.
    deltas: dict[int, bytes] = field(default_factory=dict)


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
    a projection reader: received_at in epoch ms."""
    oldest = now_ms - cfg.lateness_ms
    return {period_of(ms, cfg.salt_period) for ms in {b["received_at"] for b in batch["items"]} if ms >= oldest}


def process_batch(codec: Codec, batch: dict[str, Any], partition: int, offset: int,
                  salts: dict[str, bytes | None], cfg: Stage1Config, now_ms: int) -> Stage1Result:
    out = Stage1Result()
    drops: dict[tuple[str, date, DropReason], int] = defaultdict(int)
    by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
    oldest = now_ms - cfg.lateness_ms
    for i, b in enumerate(batch["items"]):
        received: int = b["received_at"]
        if received < oldest:
            when = datetime.fromtimestamp(received / 1000, UTC).isoformat()
            out.bad_rows.append(_item_bad_row(codec, b, BadRowReason.TOO_LATE, f"item {i}: received_at {when} "
                                              f"is older than the allowed lateness", cfg, partition, offset))
            continue
        day = _day(received // DAY_MS)[0]
        if b.get("datacenter"):
            drops[(b["site"], day, DropReason.DATACENTER)] += 1
            continue
        info = agent_info(b.get("user_agent") or "")
        if info.verdict.bot:
            drops[(b["site"], day, info.verdict.reason or DropReason.BOT)] += 1
            continue
        if cfg.spam and is_spam_referrer(referrer_host(b.get("referrer")), cfg.spam):
            drops[(b["site"], day, DropReason.REFERRER_SPAM)] += 1
            continue
        salt = salts.get(period_of(received, cfg.salt_period))
        if salt is None:  # never hash unsalted
            out.bad_rows.append(_item_bad_row(codec, b, BadRowReason.NO_SALT, f"item {i}: no salt for period "
                                              f"{period_of(received, cfg.salt_period)}", cfg, partition, offset))
            continue
        pv = enrich(b, salt, info, cfg.keep_user_agent)
        by_partition[pv["visitor_id"] % cfg.partitions].append(pv)
        out.accepted += 1
    for p, items in sorted(by_partition.items()):
        out.enriched.append((p, codec.encode("pageview_batch", {
            "source_partition": partition, "source_offset": offset, "items": items})))
        out.deltas[p] = pageview_delta({"source_partition": partition, "source_offset": offset,
                                        "items": items}).encode()
    out.drops = _drop_counts(drops, partition, offset)
    return out


def _item_bad_row(codec: Codec, beacon: dict[str, Any], reason: BadRowReason, detail: str, cfg: Stage1Config,
                  partition: int, offset: int) -> dict[str, Any]:
    # The original record holds other, good beacons: keep exactly this one, re-encoded as a
    # one-item beacon_batch, so it can be replayed on its own.
    return bad_row(reason, detail, Component.WORKER, cfg.raw_topic, partition, offset,
                   codec.encode("beacon_batch", {"items": [beacon]}))


def _drop_counts(counts: dict[tuple[str, date, DropReason], int], partition: int, offset: int) -> list[dict[str, Any]]:
    return [drop_count(site, day, reason, n, Component.WORKER, partition, offset)
            for (site, day, reason), n in sorted(counts.items())]


def undecodable(value: bytes, exc: DecodeError, cfg: Stage1Config, partition: int, offset: int) -> dict[str, Any]:
    return bad_row(BadRowReason.UNDECODABLE, str(exc), Component.WORKER, cfg.raw_topic, partition, offset, value)


class FastStage1:
    """The same steps as process_batch, over raw bytes (streams/avro_bytes.py): strings are decoded
    and enriched once per distinct value and kept as their encoded pageview pieces, and the
    visitor partitions' window deltas are built on the way. Output records and deltas are
    identical to process_batch's (tests/test_stream_wire.py).

    Caches are per worker and bounded (cleared when full), like the LRU caches they sit on."""

    CACHE_MAX = 65536

    def __init__(self, codec: Codec, cfg: Stage1Config) -> None:
        self.codec = codec
        self.cfg = cfg
        self.read = BeaconReader(codec)  # Fallback when the schemas have another shape
        self.w = PageviewWriter(codec)
        w = self.w
        self._sites: dict[bytes, tuple[str, bytes]] = {}  # site_enc -> (site, utf-8)
        self._agents: dict[bytes, tuple[AgentInfo, bytes]] = {}  # ua -> (info, browser..user_agent)
        self._paths: dict[bytes, tuple[str, str, bytes | None, bytes, bytes]] = {}
        self._ref_hosts: dict[bytes, str] = {}
        self._ref_pieces: dict[tuple[str, str], bytes] = {}
        self._events: dict[bytes, tuple[bytes, bool]] = {}
        self._direct = w.enc("referrer_host", "") + w.enc("referrer_source", "direct")

    def periods_needed(self, items: list[RawBeacon], now_ms: int) -> set[str]:
        oldest = now_ms - self.cfg.lateness_ms
        days = {it[3] // DAY_MS for it in items if it[3] >= oldest}
        return {period_of(day * DAY_MS, self.cfg.salt_period) for day in days}

    # -- cached pieces, computed on first sight of a value -------------------------------
    def _site(self, site_enc: bytes) -> tuple[str, bytes]:
        raw = bytes(site_enc[_prefix_len(site_enc):])
        return bounded_put(self._sites, site_enc, (raw.decode(), raw), self.CACHE_MAX)

    def _agent(self, ua: bytes) -> tuple[AgentInfo, bytes]:
        text = ua.decode()
        info = agent_info(text)
        w = self.w
        piece = (w.enc("browser", info.browser) + w.enc("os", info.os) + w.enc("device", info.device)
                 + w.enc("user_agent", text if self.cfg.keep_user_agent else None))
        return bounded_put(self._agents, ua, (info, piece), self.CACHE_MAX)

    def _path(self, path: bytes) -> tuple[str, str, bytes | None, bytes, bytes]:
        host, clean, query = normalize_path(path.decode())
        w = self.w

        def utm(name: str) -> str | None:
            v = query.get(name)
            return v[0][:200] if v else None

        utms = (w.enc("utm_source", utm("utm_source")) + w.enc("utm_medium", utm("utm_medium"))
                + w.enc("utm_campaign", utm("utm_campaign")))
        return bounded_put(self._paths, path, (host, clean, w.enc("hostname", host) if host else None,
                                               w.enc("path", clean), utms), self.CACHE_MAX)

    def _ref_host(self, ref: bytes) -> str:
        return bounded_put(self._ref_hosts, ref, referrer_host(ref.decode()), self.CACHE_MAX)

    def _ref_piece(self, ref_host: str, page_host: str) -> bytes:
        w = self.w
        return bounded_put(self._ref_pieces, (ref_host, page_host), w.enc("referrer_host", ref_host)
                           + w.enc("referrer_source", referrer_source(ref_host, page_host)), self.CACHE_MAX)

    def _event(self, event_enc: bytes) -> tuple[bytes, bool]:
        event = bytes(event_enc[_prefix_len(event_enc):]).decode() or "pageview"
        return bounded_put(self._events, event_enc, (self.w.enc("event", event), event == "pageview"), self.CACHE_MAX)

    # -- one input record ----------------------------------------------------------------
    def process(self, body: bytes, items: list[RawBeacon], partition: int, offset: int,
                salts: dict[str, bytes | None], now_ms: int) -> Stage1Result:
        cfg = self.cfg
        out = Stage1Result()
        drops: dict[tuple[str, date, DropReason], int] = defaultdict(int)
        oldest = now_ms - cfg.lateness_ms
        sites, agents, paths, ref_hosts, events = (self._sites, self._agents, self._paths, self._ref_hosts,
                                                   self._events)
        ref_pieces, direct, spam, n_parts = self._ref_pieces, self._direct, cfg.spam, cfg.partitions
        period = cfg.salt_period
        blake2b = hashlib.blake2b
        accepted: list[list[Any]] = []  # encoded pieces of each pageview; [6] = visitor id
        windows: list[tuple[str, int, bool, str, int]] = []  # (site, received_at, is_pageview, path, visitor)
        vids: list[int] = []
        # Keyed BLAKE2b state per salt, copied per visitor: setting the key up costs more
        # than hashing the message.
        hashers: dict[str, Any] = {}
        day_periods: dict[int, str] = {}
        for i, it in enumerate(items):
            (_, _, eid, ts, ts_enc, site_enc, raw_path, ref, raw_event, props, ua, ip, datacenter) = it
            if ts < oldest:
                when = datetime.fromtimestamp(ts / 1000, UTC).isoformat()
                out.bad_rows.append(bad_row(BadRowReason.TOO_LATE, f"item {i}: received_at {when} is older "
                                            "than the allowed lateness", Component.WORKER, cfg.raw_topic,
                                            partition, offset,
                                            self.read.one_item_record(body, it)))
                continue
            site, site_raw = sites.get(site_enc) or self._site(site_enc)
            if datacenter:
                drops[(site, _day(ts // DAY_MS)[0], DropReason.DATACENTER)] += 1
                continue
            info, agent_piece = agents.get(ua) or self._agent(ua)
            if info.verdict.bot:
                drops[(site, _day(ts // DAY_MS)[0], info.verdict.reason or DropReason.BOT)] += 1
                continue
            ref_host = "" if not ref else (ref_hosts.get(ref) if ref in ref_hosts else self._ref_host(ref))
            if spam and is_spam_referrer(ref_host, spam):
                drops[(site, _day(ts // DAY_MS)[0], DropReason.REFERRER_SPAM)] += 1
                continue
            key = day_periods.get(ts // DAY_MS)
            if key is None:
                key = day_periods[ts // DAY_MS] = period_of(ts, period)
            hasher = hashers.get(key)
            if hasher is None:
                salt = salts.get(key)
                if salt is None:  # never hash unsalted
                    out.bad_rows.append(bad_row(BadRowReason.NO_SALT, f"item {i}: no salt for period {key}",
                                                Component.WORKER, cfg.raw_topic, partition, offset,
                                                self.read.one_item_record(body, it)))
                    continue
                hasher = hashers[key] = blake2b(key=salt, digest_size=VISITOR_DIGEST_BYTES).copy
            host, path, host_enc, path_enc, utms = paths.get(raw_path) or self._path(raw_path)
            page_host = host or site
            if ref_host:
                ref_piece = ref_pieces.get((ref_host, page_host)) or self._ref_piece(ref_host, page_host)
            else:
                ref_piece = direct
            event_enc, is_pv = events.get(raw_event) or self._event(raw_event)
            h = hasher()
            h.update(b"\x00".join((site_raw, ip, ua)))  # = enrich.visitor_id (a test compares them)
            vid = int.from_bytes(h.digest(), "big", signed=True)
            vids.append(vid)
            windows.append((site, ts, is_pv, path, vid))
            accepted.append([eid, ts_enc, site_enc, host_enc or site_enc, path_enc, event_enc, None, ref_piece,
                             utms, agent_piece, props])
        by_partition: dict[int, list[int]] = defaultdict(list)
        for j, (vid, enc) in enumerate(zip(vids, zigzag_varints(vids), strict=True)):
            accepted[j][6] = enc
            by_partition[vid % n_parts].append(j)
        for p, idx in sorted(by_partition.items()):
            out.enriched.append((p, self.w.batch(partition, offset, [b"".join(accepted[j]) for j in idx])))
            out.deltas[p] = window_delta(partition, offset, [windows[j] for j in idx]).encode()
        out.accepted = len(accepted)
        out.drops = _drop_counts(drops, partition, offset)
        return out


def _prefix_len(enc: bytes) -> int:
    """Bytes of the varint length prefix of an encoded Avro string."""
    n = 1
    while enc[n - 1] & 0x80:
        n += 1
    return n
