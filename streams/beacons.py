"""Stage 1: one beacons.raw record (a beacon_batch) -> pageview batches per visitor partition,
drop counts and bad rows. Plain Python over the whole batch; no Kafka here.

The pipeline is data: STEPS, an ordered list of (reason, step). Each step takes the beacons
still going and returns those it lets through and those it stops; the first step that
stops a beacon decides its fate, named by the step's reason (the bot step's verdict names
it more precisely: empty_user_agent, headless or bot). One loop, `run_steps`, runs them and
times each. What is left is enriched (salted visitor hash, browser/OS/device, referrer,
UTM, path) and routed to partition `visitor % N`:

    too_late -> datacenter -> bot -> referrer_spam -> no_salt -> enrich

Two paths run the same list. `process_batch` is the reference, over decoded dicts
(streams/enrich.py). `FastStage1` works on raw bytes (streams/avro_bytes.py) and is what
the worker runs: it takes the order and the reasons from STEPS, with a byte-level form of
each step, and fuses the enrichment and encoding. tests/test_stream_wire.py proves both give
the same verdicts and the same bytes.

Given the same salts, the output is a pure function of the input record, so a replayed
record yields identical pageview batches (stage 2 relies on this to skip replays).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime
from functools import lru_cache
from typing import Any

from tally.schemas.codec import Codec, DecodeError
from tally.schemas.reasons import BadRowReason, Component, DropReason
from tally.schemas.records import bad_row, drop_count, redact_text
from tally.streams.avro_bytes import BeaconReader, PageviewWriter, RawBeacon, zigzag_varints
from tally.streams.enrich import (
    UTM_FIELDS,
    AgentInfo,
    agent_info,
    enrich,
    is_spam_referrer,
    normalize_path,
    referrer_host,
    referrer_source,
    utm_values,
    visitor_ids,
)
from tally.streams.metrics import StepTimes
from tally.streams.salts import period_key
from tally.streams.windows import is_pageview, pageview_delta, period_end, window_delta

from tally.caches import bounded_put
from tally.ids import fingerprints
from tally.topics import BEACONS_RAW

DAY_MS = 86_400_000
STAGE = "beacons"  # the stage's name in the worker's step metrics
Reason = DropReason | BadRowReason


@dataclass
class Stage1Config:
    partitions: int  # of pageviews.enriched
    salt_period: str
    lateness_ms: int
    keep_user_agent: bool = False
    spam: frozenset[str] = frozenset()
    drop_empty_ua: bool = False  # seed 002: beacons without a user agent are recorded unless configured
    raw_topic: str = BEACONS_RAW
    session_timeout_ms: int = 0  # 0: no sessions (the deltas carry no session input)


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


@dataclass
class Record:
    """One input record while its beacons go through the steps."""

    cfg: Stage1Config
    partition: int
    offset: int
    now_ms: int
    salts: Mapping[str, bytes | None]
    items: list[Any]  # every beacon of the record, in order (dicts or RawBeacon tuples)
    drops: dict[tuple[str, date, DropReason], int] = field(default_factory=lambda: defaultdict(int))
    bad_rows: list[tuple[int, dict[str, Any]]] = field(default_factory=list)  # (item index, bad row)

    @property
    def oldest_ms(self) -> int:
        return self.now_ms - self.cfg.lateness_ms

    def index(self, item: Any) -> int:
        """The item's position in the record (for a bad row's detail; bad rows are rare)."""
        return next(i for i, x in enumerate(self.items) if x is item)

    def drop_counts(self) -> list[dict[str, Any]]:
        return [drop_count(site, day, reason, n, Component.WORKER, self.partition, self.offset)
                for (site, day, reason), n in sorted(self.drops.items())]


# A step: (record, beacons still going) -> (those it lets through, those it stops). A stopped
# beacon comes with its reason (None: the step's own) and, for a bad row, a detail.
Stopped = list[tuple[Any, "Reason | None", str]]
Step = Callable[[Record, list[Any]], tuple[list[Any], Stopped]]


def _split(items: list[Any], verdict: Callable[[Any], tuple[Reason | None, str] | None]) -> tuple[list[Any], Stopped]:
    kept: list[Any] = []
    stopped: Stopped = []
    for item in items:
        v = verdict(item)
        if v is None:
            kept.append(item)
        else:
            stopped.append((item, *v))
    return kept, stopped


def late_detail(index: int, received_ms: int) -> str:
    when = datetime.fromtimestamp(received_ms / 1000, UTC).isoformat()
    return f"item {index}: received_at {when} is older than the allowed lateness"


# -- the steps, over decoded beacons (the reference path) ------------------------------

def too_late(rec: Record, items: list[Any]) -> tuple[list[Any], Stopped]:
    """Older than the allowed lateness by the worker's clock: a bad row, never counted."""
    oldest = rec.oldest_ms
    return _split(items, lambda b: (None, late_detail(rec.index(b), b["received_at"]))
                  if b["received_at"] < oldest else None)


def datacenter(rec: Record, items: list[Any]) -> tuple[list[Any], Stopped]:
    """Sent from a cloud, hosting or crawler address range (the collector's flag)."""
    return _split(items, lambda b: (None, "") if b.get("datacenter") else None)


def bot(rec: Record, items: list[Any]) -> tuple[list[Any], Stopped]:
    """A bot by its user agent; the verdict names the reason (streams/bots.py)."""
    def verdict(b: dict[str, Any]) -> tuple[Reason | None, str] | None:
        v = agent_info(b.get("user_agent") or "").verdict
        return (v.reason, "") if v.bot and (v.reason is not DropReason.EMPTY_USER_AGENT or drop_empty) else None
    drop_empty = rec.cfg.drop_empty_ua
    return _split(items, verdict)


def referrer_spam(rec: Record, items: list[Any]) -> tuple[list[Any], Stopped]:
    """The referrer, or a parent domain of it, is on TALLY_REFERRER_SPAM_FILE's list."""
    spam = rec.cfg.spam
    if not spam:
        return items, []
    return _split(items, lambda b: (None, "") if is_spam_referrer(referrer_host(b.get("referrer")), spam) else None)


def no_salt(rec: Record, items: list[Any]) -> tuple[list[Any], Stopped]:
    """No salt for the beacon's period: a bad row. Never hashed unsalted."""
    def verdict(b: dict[str, Any]) -> tuple[Reason | None, str] | None:
        key = period_of(b["received_at"], rec.cfg.salt_period)
        return None if rec.salts.get(key) is not None else (None, f"item {rec.index(b)}: no salt for period {key}")
    return _split(items, verdict)


STEPS: list[tuple[Reason, Step]] = [
    (BadRowReason.TOO_LATE, too_late),
    (DropReason.DATACENTER, datacenter),
    (DropReason.BOT, bot),
    (DropReason.REFERRER_SPAM, referrer_spam),
    (BadRowReason.NO_SALT, no_salt),
]


def run_steps(steps: list[tuple[Reason, Step]], rec: Record, stop: Callable[[Any, Reason, str], None],
              times: StepTimes) -> list[Any]:
    """Run the steps in order over the record's beacons; return the beacons none stopped.
    `stop(beacon, reason, detail)` records each stopped one; each step is timed."""
    items = rec.items
    for reason, step in steps:
        if not items:
            break
        t0 = time.perf_counter()
        n = len(items)
        items, stopped = step(rec, items)
        for item, why, detail in stopped:
            stop(item, why or reason, detail)
        times.add(STAGE, reason.value, time.perf_counter() - t0, n)
    return items


# -- the reference path -------------------------------------------------------------

def periods_needed(batch: dict[str, Any], cfg: Stage1Config, now_ms: int) -> set[str]:
    """Salt periods this batch will hash with (items not already too late). Items come from
    a projection reader: received_at in epoch ms."""
    oldest = now_ms - cfg.lateness_ms
    return {period_of(ms, cfg.salt_period) for ms in {b["received_at"] for b in batch["items"]} if ms >= oldest}


def process_batch(codec: Codec, batch: dict[str, Any], partition: int, offset: int,
                  salts: Mapping[str, bytes | None], cfg: Stage1Config, now_ms: int,
                  times: StepTimes | None = None) -> Stage1Result:
    times = times if times is not None else StepTimes()
    rec = Record(cfg, partition, offset, now_ms, salts, list(batch["items"]))

    def stop(b: dict[str, Any], reason: Reason, detail: str) -> None:
        if reason.__class__ is DropReason:
            rec.drops[(b["site"], _day(b["received_at"] // DAY_MS)[0], reason)] += 1
        else:  # a bad row keeps exactly this beacon, as a one-item beacon_batch it can be replayed from
            original = codec.encode("beacon_batch", {"items": [redacted_beacon(b)]})
            rec.bad_rows.append((rec.index(b), bad_row(reason, detail, Component.WORKER, cfg.raw_topic,
                                                       partition, offset, original, redacted=True)))

    kept = run_steps(STEPS, rec, stop, times)
    out = Stage1Result()
    with times.timing(STAGE, "enrich", len(kept)):
        by_partition: dict[int, list[dict[str, Any]]] = defaultdict(list)
        for b in kept:
            salt = salts[period_of(b["received_at"], cfg.salt_period)]
            pv = enrich(b, salt, agent_info(b.get("user_agent") or ""), cfg.keep_user_agent)  # type: ignore[arg-type]
            by_partition[pv["visitor_id"] % cfg.partitions].append(pv)
        for p, items in sorted(by_partition.items()):
            record = {"source_partition": partition, "source_offset": offset, "items": items}
            out.enriched.append((p, codec.encode("pageview_batch", record)))
            out.deltas[p] = pageview_delta(record, cfg.session_timeout_ms, cfg.salt_period).encode()
    out.accepted = len(kept)
    out.drops = rec.drop_counts()
    out.bad_rows = [row for _, row in sorted(rec.bad_rows, key=lambda r: r[0])]
    return out


def redacted_beacon(b: dict[str, Any]) -> dict[str, Any]:
    """A beacon as a dead letter keeps it: no pseudonym, no query string, the referrer's
    origin, no props; still a beacon_batch item (its event_id and times are kept)."""
    referrer = b.get("referrer")
    if referrer:
        scheme, _, rest = referrer.partition("://")
        referrer = f"{scheme}://{rest.split('/', 1)[0].rsplit('@', 1)[-1]}" if rest else None
    return {**b, "ip_pseudonym": "", "path": redact_text(b["path"].partition("?")[0]), "referrer": referrer,
            "props": {}}


def undecodable(value: bytes, exc: DecodeError, cfg: Stage1Config, partition: int, offset: int) -> dict[str, Any]:
    return bad_row(BadRowReason.UNDECODABLE, str(exc), Component.WORKER, cfg.raw_topic, partition, offset, value)


# -- the path the worker runs: the same steps over raw bytes ---------------------------

class FastStage1:
    """STEPS over raw bytes (streams/avro_bytes.py), in STEPS's order and with its reasons:
    each step has a byte-level form here (`_steps`). Then one fused loop builds each pageview
    from cached pieces: strings are decoded and enriched once per distinct value and kept as
    their encoded pageview pieces, and the visitor partitions' window deltas are built on the
    way. Output records and deltas are identical to process_batch's
    (tests/test_stream_wire.py).

    Caches are per worker and bounded (cleared when full), like the LRU caches they sit on."""

    CACHE_MAX = 65536

    def __init__(self, codec: Codec, cfg: Stage1Config, times: StepTimes | None = None) -> None:
        self.codec = codec
        self.cfg = cfg
        self.times = times if times is not None else StepTimes()
        self.read = BeaconReader(codec)  # Fallback when the schemas have another shape
        self.w = PageviewWriter(codec)
        w = self.w
        self._sites: dict[bytes, tuple[str, bytes]] = {}  # site_enc -> (site, utf-8)
        self._agents: dict[bytes, tuple[AgentInfo, bytes]] = {}  # ua -> (info, browser..user_agent)
        self._paths: dict[bytes, tuple[str, str, bytes | None, bytes, bytes, tuple[str, str, str]]] = {}
        self._ref_hosts: dict[bytes, str] = {}
        self._ref_pieces: dict[tuple[str, str], tuple[bytes, str]] = {}  # -> (piece, referrer source)
        self._events: dict[bytes, tuple[bytes, bool | None]] = {}
        self._countries: dict[bytes, str] = {}  # country_enc -> country (for the sessions)
        self._direct = w.enc("referrer_host", "") + w.enc("referrer_source", "direct")
        byte_steps: dict[Step, Step] = {too_late: self._too_late, datacenter: self._datacenter, bot: self._bot,
                                        referrer_spam: self._referrer_spam, no_salt: self._no_salt}
        # The order and the reasons are STEPS's; a step without a byte-level form is a KeyError here.
        self._steps = [(reason, byte_steps[step]) for reason, step in STEPS]

    def periods_needed(self, items: list[RawBeacon], now_ms: int) -> set[str]:
        oldest = now_ms - self.cfg.lateness_ms
        days = {it[3] // DAY_MS for it in items if it[3] >= oldest}
        return {period_of(day * DAY_MS, self.cfg.salt_period) for day in days}

    # -- the steps over RawBeacon tuples: (start, end, event_id_enc, received_at, ...) -----
    def _too_late(self, rec: Record, items: list[RawBeacon]) -> tuple[list[RawBeacon], Stopped]:
        oldest = rec.oldest_ms
        late = [it for it in items if it[3] < oldest]
        if not late:
            return items, []
        return [it for it in items if it[3] >= oldest], [(it, None, late_detail(rec.index(it), it[3])) for it in late]

    def _datacenter(self, rec: Record, items: list[RawBeacon]) -> tuple[list[RawBeacon], Stopped]:
        if not any([it[12] for it in items]):
            return items, []
        return [it for it in items if not it[12]], [(it, None, "") for it in items if it[12]]

    def _bot(self, rec: Record, items: list[RawBeacon]) -> tuple[list[RawBeacon], Stopped]:
        agents, agent = self._agents, self._agent
        kept: list[RawBeacon] = []
        stopped: Stopped = []
        drop_empty = rec.cfg.drop_empty_ua
        for it in items:
            verdict = (agents.get(it[10]) or agent(it[10]))[0].verdict
            if verdict.bot and (verdict.reason is not DropReason.EMPTY_USER_AGENT or drop_empty):
                stopped.append((it, verdict.reason, ""))
            else:
                kept.append(it)
        return kept, stopped

    def _referrer_spam(self, rec: Record, items: list[RawBeacon]) -> tuple[list[RawBeacon], Stopped]:
        spam = self.cfg.spam
        if not spam:
            return items, []
        hosts = [self._ref_host(it[7]) if it[7] else "" for it in items]
        verdicts = [is_spam_referrer(h, spam) for h in hosts]
        return ([it for it, v in zip(items, verdicts, strict=True) if not v],
                [(it, None, "") for it, v in zip(items, verdicts, strict=True) if v])

    def _no_salt(self, rec: Record, items: list[RawBeacon]) -> tuple[list[RawBeacon], Stopped]:
        salts, period = rec.salts, self.cfg.salt_period
        keys = {day: period_of(day * DAY_MS, period) for day in {it[3] // DAY_MS for it in items}}
        missing = {day for day, key in keys.items() if salts.get(key) is None}
        if not missing:
            return items, []
        return ([it for it in items if it[3] // DAY_MS not in missing],
                [(it, None, f"item {rec.index(it)}: no salt for period {keys[it[3] // DAY_MS]}")
                 for it in items if it[3] // DAY_MS in missing])

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

    def _path(self, path: bytes) -> tuple[str, str, bytes | None, bytes, bytes, tuple[str, ...]]:
        host, clean, query = normalize_path(path.decode())
        w = self.w
        values = utm_values(query)
        utms = b"".join(w.enc(name, v) for name, v in zip(UTM_FIELDS, values, strict=True))
        return bounded_put(self._paths, path, (host, clean, w.enc("hostname", host) if host else None,
                                               w.enc("path", clean), utms, tuple(v or "" for v in values)),
                           self.CACHE_MAX)

    def _ref_host(self, ref: bytes) -> str:
        host = self._ref_hosts.get(ref)
        return host if host is not None else bounded_put(self._ref_hosts, ref, referrer_host(ref.decode()),
                                                         self.CACHE_MAX)

    def _ref_piece(self, ref_host: str, page_host: str) -> tuple[bytes, str]:
        w = self.w
        source = referrer_source(ref_host, page_host)
        return bounded_put(self._ref_pieces, (ref_host, page_host), (w.enc("referrer_host", ref_host)
                           + w.enc("referrer_source", source), source), self.CACHE_MAX)

    def _event(self, event_enc: bytes) -> tuple[bytes, bool | None]:
        """The encoded event name, and whether it is a pageview (None: an engagement event,
        which the windows and sessions leave out)."""
        event = bytes(event_enc[_prefix_len(event_enc):]).decode() or "pageview"
        return bounded_put(self._events, event_enc, (self.w.enc("event", event), is_pageview(event)), self.CACHE_MAX)

    # -- one input record ----------------------------------------------------------------
    def process(self, body: bytes, items: list[RawBeacon], partition: int, offset: int,
                salts: Mapping[str, bytes | None], now_ms: int) -> Stage1Result:
        cfg, times = self.cfg, self.times
        rec = Record(cfg, partition, offset, now_ms, salts, items)
        sites = self._sites

        def stop(it: RawBeacon, reason: Reason, detail: str) -> None:
            if reason.__class__ is DropReason:
                site = (sites.get(it[5]) or self._site(it[5]))[0]
                rec.drops[(site, _day(it[3] // DAY_MS)[0], reason)] += 1
            else:  # the bad row keeps exactly this beacon's bytes, as a one-item beacon_batch
                one = self.codec.decode("beacon_batch", self.read.one_item_record(body, it))
                original = self.codec.encode("beacon_batch", {"items": [redacted_beacon(one["items"][0])]})
                rec.bad_rows.append((rec.index(it), bad_row(reason, detail, Component.WORKER, cfg.raw_topic,
                                                            partition, offset, original, redacted=True)))

        kept = run_steps(self._steps, rec, stop, times)
        out = Stage1Result()
        with times.timing(STAGE, "enrich", len(kept)):
            self._enrich(kept, rec, out)
        out.drops = rec.drop_counts()
        out.bad_rows = [row for _, row in sorted(rec.bad_rows, key=lambda r: r[0])]
        return out

    def _enrich(self, items: list[RawBeacon], rec: Record, out: Stage1Result) -> None:
        """The pageviews of the beacons no step stopped, from cached encoded pieces, routed to
        partition visitor % N, with each partition's window delta."""
        sites, agents, paths, events = self._sites, self._agents, self._paths, self._events
        ref_hosts, ref_pieces, direct, period = self._ref_hosts, self._ref_pieces, self._direct, self.cfg.salt_period
        timeout, countries = self.cfg.session_timeout_ms, self._countries
        accepted: list[list[Any]] = []  # encoded pieces of each pageview; [6] = visitor id
        # [site, received_at, is_pageview, path, visitor] (+ [session attrs, period end] with sessions)
        windows: list[list[Any]] = []
        period_ends: dict[int, int] = {}
        keys: list[tuple[bytes, bytes, bytes]] = []  # (site, IP pseudonym, UA): the visitor hash's input
        eids: list[bytes] = []  # each event_id's text (its Avro string without the length prefix)
        day_periods: dict[int, str] = {}
        for it in items:
            (_, _, eid, ts, ts_enc, site_enc, raw_path, ref, raw_event, props, ua, ip, _, country_enc) = it
            site, site_raw = sites.get(site_enc) or self._site(site_enc)
            info, agent_piece = agents.get(ua) or self._agent(ua)
            if ts // DAY_MS not in day_periods:
                day_periods[ts // DAY_MS] = period_of(ts, period)
                period_ends[ts // DAY_MS] = period_end(ts, period)
            host, path, host_enc, path_enc, utms, utm_values = paths.get(raw_path) or self._path(raw_path)
            page_host = host or site
            ref_host = (ref_hosts.get(ref) or self._ref_host(ref)) if ref else ""
            if ref_host:
                ref_piece, source = ref_pieces.get((ref_host, page_host)) or self._ref_piece(ref_host, page_host)
            else:
                ref_piece, source = direct, "direct"
            event_enc, is_pv = events.get(raw_event) or self._event(raw_event)
            keys.append((site_raw, ip, ua))
            eids.append(eid[1:] if eid[0] < 0x80 else eid[_prefix_len(eid):])
            if timeout:
                country = countries.get(country_enc)
                if country is None:
                    country = bounded_put(countries, country_enc, bytes(country_enc[_prefix_len(country_enc):]).decode(),
                                          self.CACHE_MAX)
                windows.append([site, ts, is_pv, path, 0, (site, source, ref_host, *utm_values[:3], info.device,
                                                           info.browser, info.os, country, *utm_values[3:]),
                                period_ends[ts // DAY_MS]])
            else:
                windows.append([site, ts, is_pv, path, 0])
            accepted.append([eid, ts_enc, site_enc, host_enc or site_enc, path_enc, event_enc, None, ref_piece,
                             utms, agent_piece, props, country_enc])
        vids = self._visitors(items, keys, day_periods, rec.salts)
        by_partition: dict[int, list[int]] = defaultdict(list)
        n_parts = self.cfg.partitions
        for j, (vid, enc) in enumerate(zip(vids, zigzag_varints(vids), strict=True)):
            accepted[j][6] = enc
            windows[j][4] = vid
            by_partition[vid % n_parts].append(j)
        partition, offset = rec.partition, rec.offset
        fps = fingerprints(eids)  # stage 2 deduplicates by them
        for p, idx in sorted(by_partition.items()):
            out.enriched.append((p, self.w.batch(partition, offset, [b"".join(accepted[j]) for j in idx])))
            out.deltas[p] = window_delta(partition, offset, [windows[j] for j in idx], timeout,
                                         [fps[j] for j in idx]).encode()
        out.accepted = len(accepted)

    @staticmethod
    def _visitors(items: list[RawBeacon], keys: list[tuple[bytes, bytes, bytes]], day_periods: dict[int, str],
                  salts: Mapping[str, bytes | None]) -> list[int]:
        """Visitor ids, hashed per salt period (a batch nearly always has one)."""
        periods = set(day_periods.values())
        if len(periods) == 1:
            return visitor_ids(salts[periods.pop()], keys)  # type: ignore[arg-type]
        vids = [0] * len(keys)
        for key in periods:
            idx = [j for j, it in enumerate(items) if day_periods[it[3] // DAY_MS] == key]
            for j, vid in zip(idx, visitor_ids(salts[key], [keys[j] for j in idx]), strict=True):  # type: ignore[arg-type]
                vids[j] = vid
        return vids


def _prefix_len(enc: bytes) -> int:
    """Bytes of the varint length prefix of an encoded Avro string."""
    n = 1
    while enc[n - 1] & 0x80:
        n += 1
    return n
