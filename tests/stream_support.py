"""Helpers for the stream worker's tests: produce beacon batches straight into beacons.raw,
read topics back, and recompute window totals from the input (the 'clean recomputation')."""

from __future__ import annotations

import uuid
from collections import defaultdict
from collections.abc import Hashable, Iterable
from datetime import UTC, datetime
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from tally.schemas.codec import default_codec
from tally.streams.sessions import sessionize
from tally.streams.windows import DAY_MS, HOUR_MS, month_bounds, period_end

from tally.config import Settings
from tally.kafka import consumer_config, producer_config
from tests.helpers import led_partitions

FIREFOX = "Mozilla/5.0 (X11; Linux x86_64; rv:127.0) Gecko/20100101 Firefox/127.0"
CHROME = ("Mozilla/5.0 (Windows NT 10.0; Win64; x64) AppleWebKit/537.36 (KHTML, like Gecko) "
          "Chrome/126.0.0.0 Safari/537.36")
IPHONE = ("Mozilla/5.0 (iPhone; CPU iPhone OS 17_5 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like Gecko) "
          "Version/17.5 Mobile/15E148 Safari/604.1")
GOOGLEBOT = "Mozilla/5.0 (compatible; Googlebot/2.1; +http://www.google.com/bot.html)"


def beacon(site: str = "example.com", path: str = "/", ua: str = FIREFOX, ip: str = "ip-1",
           received_at: datetime | None = None, referrer: str | None = None, datacenter: bool = False,
           event: str = "pageview", country: str = "") -> dict[str, Any]:
    return {"event_id": str(uuid.uuid4()), "received_at": received_at or datetime.now(UTC), "site": site,
            "path": path, "referrer": referrer, "event": event, "props": {}, "user_agent": ua,
            "ip_pseudonym": ip, "datacenter": datacenter, "country": country}


def produce(settings: Settings, topic: str, values: Iterable[bytes], partition: int | None = None,
            keys: Iterable[bytes | None] | None = None) -> int:
    p = Producer(producer_config(settings))
    n = 0
    keys = iter(keys) if keys is not None else None
    for v in values:
        kw: dict[str, Any] = {} if partition is None else {"partition": partition}
        if keys is not None:
            kw["key"] = next(keys)
        while True:
            try:
                p.produce(settings.topic(topic), value=v, **kw)
                break
            except BufferError:
                p.poll(0.1)
        n += 1
        p.poll(0)
    assert p.flush(30) == 0
    return n


def produce_batches(settings: Settings, batches: list[list[dict[str, Any]]], partition: int | None = None) -> int:
    codec = default_codec()
    return produce(settings, "beacons.raw", (codec.encode("beacon_batch", {"items": b}) for b in batches), partition)


def read_all(settings: Settings, topic: str, timeout: float = 30) -> list[Any]:
    """Every record of a topic, from the beginning to its current end."""
    name = settings.topic(topic)
    c = Consumer(consumer_config(settings, f"test-reader-{uuid.uuid4().hex[:6]}"))
    try:
        ends = {}
        for p in led_partitions(c, name, timeout):
            lo, hi = c.get_watermark_offsets(TopicPartition(name, p), timeout=timeout)
            if hi > lo:
                ends[p] = hi
        if not ends:
            return []
        c.assign([TopicPartition(name, p, 0) for p in ends])
        out, done = [], set()
        while len(done) < len(ends):
            for m in c.consume(10000, timeout=1.0):
                if m.error():
                    continue
                out.append(m)
                if m.offset() >= ends[m.partition()] - 1:
                    done.add(m.partition())
        return out
    finally:
        c.close()


def decoded(settings: Settings, topic: str, schema: str) -> list[dict[str, Any]]:
    codec = default_codec()
    return [codec.decode(schema, m.value()) for m in read_all(settings, topic) if m.value() is not None]


def latest_aggregates(settings: Settings) -> dict[tuple[str, str, str, int], tuple[int, int]]:
    """(kind, scope, dimension, window_start ms) -> (count, uniques), summed over partitions,
    keeping the highest version per (key, partition): what the sink's ReplacingMergeTree keeps."""
    best: dict[tuple[Any, ...], dict[str, Any]] = {}
    for a in decoded(settings, "aggregates", "window_aggregate"):
        start = int(a["window_start"].timestamp() * 1000)
        k = (a["kind"], a["scope"], a["dimension"], start, a["partition"])
        if k not in best or a["version"] > best[k]["version"]:
            best[k] = a
    totals: dict[tuple[str, str, str, int], list[int]] = defaultdict(lambda: [0, 0])
    for (kind, scope, dim, start, _), a in best.items():
        totals[(kind, scope, dim, start)][0] += a["count"]
        totals[(kind, scope, dim, start)][1] += a["uniques"]
    # A session window back at 0 (its sessions merged into another) is no window at all.
    return {k: (v[0], v[1]) for k, v in totals.items() if v[0] or k[0] not in SESSION_KINDS}


SESSION_KINDS = frozenset({"visits_hour", "bounces_hour", "visit_duration_hour", "entry_page_day", "exit_page_day"})


def expected_sessions(events: Iterable[tuple[str, Hashable, int, bool, str]], timeout_seconds: int = 1800,
                      period: str = "day") -> dict[tuple[str, str, str, int], int]:
    """The session windows recomputed in one batch (streams.sessions.sessionize per visitor
    and salt period) from (site, visitor, received_at ms, is_pageview, path) events; only
    the non-zero ones, as the stream's zero totals stand for no row."""
    by_visitor: dict[tuple[Any, ...], list[Any]] = defaultdict(list)
    for site, who, ms, is_pv, path in events:
        by_visitor[(site, who, period_end(ms, period))].append((ms, is_pv, path, (site,)))
    out: dict[tuple[str, str, str, int], int] = defaultdict(int)
    for (site, _, _), evs in by_visitor.items():
        for s in sessionize(evs, timeout_seconds * 1000):
            hour, day = s.start - s.start % HOUR_MS, s.start - s.start % DAY_MS
            out[("visits_hour", site, "", hour)] += 1
            out[("bounces_hour", site, "", hour)] += s.bounce
            out[("visit_duration_hour", site, "", hour)] += s.duration_ms
            out[("entry_page_day", site, s.entry[2], day)] += 1
            out[("exit_page_day", site, s.exit[2], day)] += 1
    return {k: v for k, v in out.items() if v}


def expected_aggregates(beacons: Iterable[dict[str, Any]], period: str = "day",
                        session_timeout_seconds: int = 1800) -> dict[tuple[str, str, str, int], tuple[int, int]]:
    """The clean recomputation: pageviews and distinct visitors per site and window, and the
    session windows (count, 0), straight from the input. A visitor is (salt period, site, ip
    pseudonym, UA)."""
    counts: dict[tuple[str, str, str, int], int] = defaultdict(int)
    visitors: dict[tuple[str, str, str, int], set[Any]] = defaultdict(set)
    events = []
    beacons = list(beacons)
    for b in beacons:
        ms = int(b["received_at"].timestamp() * 1000)
        salt_period = b["received_at"].strftime("%Y-%m-%d" if period == "day" else "%Y-%m")
        who = (salt_period, b["ip_pseudonym"], b["user_agent"])
        keys = [("site_hour", b["site"], "", ms - ms % HOUR_MS), ("site_day", b["site"], "", ms - ms % DAY_MS),
                ("site_month", b["site"], "", month_bounds(ms)[0])]
        for k in keys:
            counts[k] += b["event"] == "pageview"
            visitors[k].add(who)
        if b["event"] == "pageview":
            counts[("path_day", b["site"], b["path"].split("?")[0], ms - ms % DAY_MS)] += 1
        events.append((b["site"], who, ms, b["event"] == "pageview", b["path"].split("?")[0]))
    out = {k: (counts[k], len(visitors[k])) for k in visitors}
    out.update({k: (v, 0) for k, v in counts.items() if k[0] == "path_day"})
    if session_timeout_seconds:
        out.update({k: (v, 0) for k, v in expected_sessions(events, session_timeout_seconds, period).items()})
    return out


def traffic(n: int, seed: int, now: datetime | None = None, batch: int = 100) -> list[list[dict[str, Any]]]:
    """n browser beacons in batches: 3 sites, 50 paths, 2,000 visitors, 3 browsers, all within
    the last few minutes (so no window is late)."""
    import random

    rnd = random.Random(seed)
    now = now or datetime.now(UTC)
    uas = (FIREFOX, CHROME, IPHONE)
    items = []
    for _ in range(n):
        v = rnd.randrange(2000)
        items.append({"event_id": str(uuid.UUID(int=rnd.getrandbits(128))),
                      "received_at": now.replace(microsecond=0) - __import__("datetime").timedelta(seconds=rnd.randrange(300)),
                      "site": ("example.com", "shop.example.com", "blog.example.com")[v % 3],
                      "path": f"/p/{rnd.randrange(50)}", "referrer": None, "event": "pageview",
                      "props": {}, "user_agent": uas[v % 3], "ip_pseudonym": f"ip-{v}", "datacenter": False})
    return [items[i:i + batch] for i in range(0, n, batch)]


def input_lag(settings: Settings) -> dict[str, int] | None:
    """The stream group's lag per input topic (None while the broker cannot say)."""
    from tally.ops.lag import group_report

    from tally.topics import admin

    inputs = {settings.topic(t) for t in ("beacons.raw", "pageviews.enriched", "product.events")}
    try:
        report = group_report(admin(settings), settings.app_id)
    except Exception:
        return None
    return {lag.topic: lag.total for lag in report.lag if lag.topic in inputs}


def assert_converges(settings: Settings, expected: dict[tuple[str, str, str, int], tuple[int, int]],
                     worker: Any, timeout: float = 240, settle: float = 10) -> float:
    """Wait until the aggregates equal `expected` with no input lag left. Otherwise fail, and
    say which way: a STALL (input left and the totals stopped moving, or the timeout) or a
    DRIFT (all input processed and the totals settled on other numbers), with the drifting
    keys and the tail of the worker's log. Returns the seconds it took.

    Totals count as settled only once the worker holds every partition's rebuilt state: a
    worker still starting (slow on a loaded machine) has emitted nothing yet, and that is
    neither a stall nor a drift."""
    import re
    import time

    def holds_every_partition() -> bool:
        found = set(re.findall(r"web state of partition (\d+) rebuilt", worker.output()))
        return len(found) >= settings.topic_partitions

    start = time.monotonic()
    deadline = start + timeout
    last: dict[Any, Any] | None = None
    moved = time.monotonic()
    lag: dict[str, int] | None = None
    got: dict[Any, Any] = {}
    while time.monotonic() < deadline:
        lag = input_lag(settings)
        got = latest_aggregates(settings)
        done = lag is not None and not any(lag.values())
        if done and got == expected:
            return time.monotonic() - start
        if got != last or not holds_every_partition():
            last, moved = got, time.monotonic()
        elif done and time.monotonic() - moved > settle:
            break  # settled: nothing left to process and nothing changes
        time.sleep(2)
    drift = {k: (got.get(k), v) for k, v in expected.items() if got.get(k) != v}
    extra = sorted(k for k in got if k not in expected)
    short = sum(1 for g, w in drift.values() if g is None or g[0] < w[0])
    kind = "DRIFT" if lag is not None and not any(lag.values()) else "STALL"
    sample = "\n".join(f"  {k}: got {g}, want {w}" for k, (g, w) in sorted(drift.items())[:15])
    raise AssertionError(
        f"{kind}: input lag {lag}; totals last moved {time.monotonic() - moved:.0f}s ago; "
        f"{len(drift)} of {len(expected)} keys differ ({short} short), {len(extra)} unexpected keys\n"
        f"{sample}\n--- worker log (tail) ---\n{worker.output()[-4000:]}")
