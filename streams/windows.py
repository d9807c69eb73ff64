"""Tumbling-window state of one stream partition, made idempotent against replays.

State of partition p = a fold of *deltas*, one delta per applied input batch. A delta names
its input record (source partition, source offset) and carries what the batch adds: per
(site, hour) the event and pageview counts and the distinct visitor ids; per (site, path, day)
the pageview count; per product key the events and workspace ids.

- `apply` skips a delta whose source offset is at or below the highest offset already
  applied for that source partition (the *watermark*). A replayed input record (after a
  crash, a rebalance or a producer retry) therefore changes nothing.
- Pageview deltas carry one row per event with a fingerprint of its event_id, product
  deltas the fingerprint and occurred_at of their one event. `apply` leaves out the events
  whose id it applied before (streams/idsets.SeenEvents, kept per hour of the event, for
  TALLY_DEDUP_WINDOW_SECONDS at most): a batch the collector sent twice, or a product
  event an SDK sent again, in two input records, counts once. The delta is then recomputed
  from the events left (`without`).
- Every applied delta, as applied, is also written to the partition's changelog topic
  (streams/state.py packs it; the window stage emits it), before the input offset is
  committed. A new owner of p rebuilds the state by folding the changelog through the same
  `apply`, watermarks and event ids included, so a delta written twice (by a zombie
  worker, say) is applied once, and the ids held are rebuilt with the state.
- Aggregates carry `version` = events applied to that window so far. It only grows, and
  equal versions mean equal totals, so re-emitting after recovery is harmless.

Visitor sets are `VisitorSet`s (streams/idsets.py): a sorted numpy uint64 array plus a
small Python set of recent additions merged in when it grows; ~8-10 bytes per visitor per
window instead of ~70 for a Python set of ints.
"""

from __future__ import annotations

import struct
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import numpy as np
import orjson
from tally.schemas.avro_writer import encode_long
from tally.schemas.engagement import ENGAGEMENT
from tally.streams.avro_bytes import zigzag_packed
from tally.streams.idsets import SeenEvents, VisitorSet, by_hour
from tally.streams.sessions import Attrs, Run, Sessions, session_attrs

from tally.caches import bounded_put
from tally.clock import epoch_ms
from tally.ids import fingerprints

HOUR_MS = 3600_000
DAY_MS = 24 * HOUR_MS
MASK64 = (1 << 64) - 1


def period_end(ms: int, salt_period: str) -> int:
    """End of the salt period of an event: sessions end there (the visitor id changes)."""
    return ms - ms % DAY_MS + DAY_MS if salt_period == "day" else month_bounds(ms - ms % DAY_MS)[1]


def hour_start(ms: int) -> int:
    return ms - ms % HOUR_MS


def day_start(ms: int) -> int:
    return ms - ms % DAY_MS


@lru_cache(maxsize=4096)
def month_bounds(ms: int) -> tuple[int, int]:
    import datetime as dt

    d = dt.datetime.fromtimestamp(ms / 1000, dt.UTC)
    start = dt.datetime(d.year, d.month, 1, tzinfo=dt.UTC)
    end = dt.datetime(d.year + (d.month == 12), d.month % 12 + 1, 1, tzinfo=dt.UTC)
    return epoch_ms(start), epoch_ms(end)


@dataclass(slots=True)
class Window:
    events: int = 0  # every event applied: the version
    count: int = 0  # pageviews (web) or events (product)
    visitors: VisitorSet | None = None
    wire: Any = None  # what the emitter caches per window (its encoded key and fixed fields)


@dataclass
class Delta:
    """What one input record adds to a partition's state."""

    source_partition: int
    source_offset: int
    # (site, hour_start) -> (events, pageviews, distinct visitor ids as uint64: a list when
    # decoded from bytes, a set when just built, an array from older callers)
    hours: dict[tuple[str, int], tuple[int, int, Any]] = field(default_factory=dict)
    # (site, path, day_start) -> pageviews
    paths: dict[tuple[str, str, int], int] = field(default_factory=dict)
    # (tenant, family, day_start) -> (events, workspace ids)
    product: dict[tuple[str, str, int], tuple[int, np.ndarray]] = field(default_factory=dict)
    # Per event (visitor id, received_at ms, is_pageview, path, period end ms, attrs): the
    # session input when the timeout is set; with sessions off (timeout 0) the rows are there
    # only for deduplication, with the period end 0 and attrs (site,).
    session_timeout_ms: int = 0
    events: list[tuple[int, int, bool, str, int, Attrs]] = field(default_factory=list)
    # The fingerprint of each event's event_id (tally.ids.fingerprints), aligned with events
    # (a pageview delta) or with event_times (a product delta: it has no events). Empty: the
    # delta is not deduplicated (a bad product event, deltas written without ids).
    event_ids: list[int] = field(default_factory=list)
    event_times: list[int] = field(default_factory=list)  # product deltas: each event's occurred_at ms

    def without(self, drop: set[int]) -> Delta:
        """This delta without the events at the positions in `drop`: its windows, visitors and
        session input recomputed from the events left (the deltas stage 1 builds are a pure
        function of their events)."""
        if self.event_times:  # a product delta is one event: left out, it adds nothing
            if set(range(len(self.event_times))) - drop:
                raise ValueError("a product delta is left out whole or not at all")
            return Delta(self.source_partition, self.source_offset)
        keep = [i for i in range(len(self.events)) if i not in drop]
        items = [(e[5][0], e[1], e[2], e[3], e[0], e[5], e[4]) for e in (self.events[i] for i in keep)]
        return window_delta(self.source_partition, self.source_offset, items, self.session_timeout_ms,
                            [self.event_ids[i] for i in keep])

    def encode(self) -> bytes:
        """Compact bytes for the changelog: a JSON header and the raw id arrays."""
        flat: list[int] = []  # every id, in order: one array conversion for the whole delta
        hours = []
        for (site, start), (events, pvs, ids) in self.hours.items():
            hours.append([site, start, events, pvs, len(ids)])
            flat.extend(ids.tolist() if isinstance(ids, np.ndarray) else ids)
        product = []
        for (tenant, family, start), (events, ids) in self.product.items():
            product.append([tenant, family, start, events, len(ids)])
            flat.extend(ids.tolist() if isinstance(ids, np.ndarray) else ids)
        # orjson: the same compact JSON as json.dumps (UTF-8 instead of \u escapes, which both
        # read alike), at a fraction of the cost: every input record is encoded and decoded once.
        head = {"s": self.source_partition, "o": self.source_offset, "h": hours,
                "p": [[s, p, d, n] for (s, p, d), n in self.paths.items()], "w": product}
        if self.events:
            attrs: dict[Attrs, int] = {}
            rows = []
            for vid, ms, is_pv, path, pend, a in self.events:
                i = attrs.get(a)
                if i is None:
                    i = attrs[a] = len(attrs)
                rows.append((ms, is_pv, path, pend, i))
                flat.append(vid)
            texts = _ATTRS_TEXT
            head["x"] = {"t": self.session_timeout_ms, "e": rows,
                         "a": [texts.get(a) or _attrs_text(a) for a in attrs]}
            if self.event_ids:  # after the visitor ids, one per event
                head["x"]["i"] = 1
                flat.extend(self.event_ids)
        elif self.event_ids:  # a product delta's ids, after its workspace ids
            head["i"] = self.event_times
            flat.extend(self.event_ids)
        head = orjson.dumps(head)
        return struct.pack(">I", len(head)) + head + np.array(flat, dtype=np.uint64).tobytes()

    @classmethod
    def decode(cls, data: bytes) -> Delta:
        (n,) = struct.unpack_from(">I", data)
        head = orjson.loads(data[4:4 + n])
        # One list for the whole delta (apply() feeds Python sets): slicing it is cheaper than
        # one array-to-list conversion per window.
        ids = np.frombuffer(data, dtype=np.uint64, offset=4 + n).tolist()
        d = cls(head["s"], head["o"])
        at = 0
        for site, start, events, pvs, k in head["h"]:
            d.hours[(site, start)] = (events, pvs, ids[at:at + k])
            at += k
        for tenant, family, start, events, k in head["w"]:
            d.product[(tenant, family, start)] = (events, ids[at:at + k])
            at += k
        for s, p, day, cnt in head["p"]:
            d.paths[(s, p, day)] = cnt
        x = head.get("x")
        if x:
            d.session_timeout_ms = x["t"]
            read = _ATTRS_READ
            attrs = [(read.get(a) or _read_attrs(a)) if a.__class__ is str else session_attrs(a) for a in x["a"]]
            d.events = [(ids[at + j], ms, bool(pv), path, pend, attrs[i])
                        for j, (ms, pv, path, pend, i) in enumerate(x["e"])]
            if x.get("i"):
                n = len(d.events)
                d.event_ids = ids[at + n:at + 2 * n]
        elif "i" in head:
            d.event_times = head["i"]
            d.event_ids = ids[at:at + len(d.event_times)]
        return d


# A delta's session attributes go as the JSON text of each distinct tuple (a string in the
# header's list): stage 2 reads each text once and then finds it here, the same tuple object
# for every delta that carries it, instead of a new list of twelve strings per delta.
# (Deltas written before carry lists: read as they are.)
ATTRS_CACHE_MAX = 65536
_ATTRS_TEXT: dict[Attrs, str] = {}
_ATTRS_READ: dict[str, Attrs] = {}


def _attrs_text(attrs: Attrs) -> str:
    return bounded_put(_ATTRS_TEXT, attrs, orjson.dumps(attrs).decode(), ATTRS_CACHE_MAX)


def _read_attrs(a: str) -> Attrs:
    return bounded_put(_ATTRS_READ, a, session_attrs(orjson.loads(a)), ATTRS_CACHE_MAX)


def pageview_attrs(pv: dict[str, Any]) -> Attrs:
    """What a session keeps of its entry pageview (missing UTM values as "")."""
    return (pv["site"], pv["referrer_source"], pv["referrer_host"], pv["utm_source"] or "", pv["utm_medium"] or "",
            pv["utm_campaign"] or "", pv["device"], pv["browser"], pv["os"], pv.get("country") or "",
            pv.get("utm_content") or "", pv.get("utm_term") or "")


def is_pageview(event: str) -> bool | None:
    """Whether an event is a pageview; None for an engagement event, which no window or
    session counts (tally.schemas.engagement)."""
    return None if event == ENGAGEMENT else event == "pageview"


def pageview_delta(batch: dict[str, Any], session_timeout_ms: int = 0, salt_period: str = "day") -> Delta:
    """The delta of one decoded pageview_batch record (with session input when the timeout is set)."""
    rows: Iterable[tuple[Any, ...]]
    if session_timeout_ms:
        rows = ((pv["site"], ms, is_pageview(pv["event"]), pv["path"], pv["visitor_id"], pageview_attrs(pv),
                 period_end(ms, salt_period)) for pv in batch["items"] for ms in (epoch_ms(pv["received_at"]),))
    else:
        rows = ((pv["site"], epoch_ms(pv["received_at"]), is_pageview(pv["event"]), pv["path"], pv["visitor_id"])
                for pv in batch["items"])
    ids = [pv.get("event_id") for pv in batch["items"]]
    event_ids = fingerprints([str(i).encode() for i in ids]) if ids and None not in ids else None
    return window_delta(batch["source_partition"], batch["source_offset"], rows, session_timeout_ms, event_ids)


def window_delta(source_partition: int, source_offset: int, items: Iterable[tuple[Any, ...]],
                 session_timeout_ms: int = 0, event_ids: list[int] | None = None) -> Delta:
    """The delta of one batch of pageviews given as (site, received_at ms, is_pageview, path,
    visitor_id), plus (attrs, period end ms) when sessions are on, and the fingerprints of
    their event ids: stage 1 builds it while encoding the batch, stage 2 from a decoded batch.
    Engagement events (is_pageview None) are left out, with their ids: they are not events of
    any window or session."""
    d = Delta(source_partition, source_offset)
    hours: dict[tuple[str, int], list[Any]] = {}
    paths = d.paths
    items = list(items)
    if any(it[2] is None for it in items):
        kept = [i for i, it in enumerate(items) if it[2] is not None]
        items = [items[i] for i in kept]
        if event_ids is not None:
            event_ids = [event_ids[i] for i in kept]
    if session_timeout_ms or event_ids is not None:
        d.session_timeout_ms = session_timeout_ms
        d.events = ([(it[4] & MASK64, it[1], it[2], it[3], it[6], it[5]) for it in items] if session_timeout_ms
                    else [(it[4] & MASK64, it[1], it[2], it[3], 0, (it[0],)) for it in items])
        if event_ids is not None:
            if len(event_ids) != len(d.events):
                raise ValueError(f"{len(event_ids)} event ids for {len(d.events)} events")
            d.event_ids = event_ids
        items = d.events and [(a[5][0], a[1], a[2], a[3], a[0]) for a in d.events]
    for site, ms, is_pv, path, visitor in items:
        key = (site, ms - ms % HOUR_MS)
        h = hours.get(key)
        if h is None:
            h = hours[key] = [0, 0, set()]
        h[0] += 1
        h[1] += is_pv
        h[2].add(visitor & MASK64)
        if is_pv:
            pkey = (site, path, ms - ms % DAY_MS)
            paths[pkey] = paths.get(pkey, 0) + 1
    for key, (events, pvs, ids) in hours.items():
        d.hours[key] = (events, pvs, ids)  # a set of uint64 ids: encode() and apply() take it as is
    return d


AggKey = tuple[str, str, str, int]  # kind, scope, dimension, window_start


def _hour_windows(site: str, start: int) -> tuple[tuple[AggKey, int], ...]:
    """The windows an event of this site and hour counts in, with their ends."""
    day = day_start(start)
    m0, m1 = month_bounds(day)
    return ((("site_hour", site, "", start), start + HOUR_MS), (("site_day", site, "", day), day + DAY_MS),
            (("site_month", site, "", m0), m1))


def _event_hours(d: Delta) -> dict[int, Sequence[int]]:
    """The positions of d's events by their hour (its windows' hours say when it is one)."""
    if d.event_times:
        return by_hour(d.event_times)
    hours = {hour for _, hour in d.hours}
    if len(hours) == 1:
        return {hours.pop(): range(len(d.events))}
    return by_hour([e[1] for e in d.events])


class PartitionState:
    """Window state of one partition of pageviews.enriched (or product.events)."""

    def __init__(self, partition: int) -> None:
        self.partition = partition
        self.watermarks: dict[int, int] = {}
        self.windows: dict[AggKey, Window] = {}
        self.ends: dict[AggKey, int] = {}
        # The windows changed since their last emission, with their Window: the flush takes
        # them as they are (two lookups per key in a dict of every window were ~0.6 us).
        self.dirty: dict[AggKey, Window] = {}
        # The session windows changed since their last emission: they go out with the session
        # rows (TALLY_SESSION_FLUSH_SECONDS), less often than the other windows' totals.
        self.session_dirty: dict[AggKey, Window] = {}
        # (site, hour_start) -> its site_hour, site_day and site_month keys with their ends
        self._hour_keys: dict[tuple[str, int], tuple[tuple[AggKey, int], ...]] = {}
        self.sessions = Sessions()
        self.session_events = 0  # session events applied: the version of the session windows
        self.seen_events = SeenEvents()  # the event ids applied, while their windows are open

    def seen(self, source_partition: int, source_offset: int) -> bool:
        return source_offset <= self.watermarks.get(source_partition, -1)

    def apply(self, d: Delta, open_after_ms: int | None = None, remember_after_ms: int | None = None) -> Delta | None:
        """Fold one delta in, and return it as applied. None (and no change) when its input
        record was applied before (the watermark). Events whose event_id was applied before,
        in another input record (a collector's replay of a batch Kafka already had) or earlier
        in this one, are left out: the delta returned is then a new one, without them.
        Windows that ended before open_after_ms are closed: their updates are ignored. The ids
        of events in hours that ended before remember_after_ms (default: open_after_ms) are
        not remembered (TALLY_DEDUP_WINDOW_SECONDS)."""
        if self.seen(d.source_partition, d.source_offset):
            return None
        if d.event_ids:
            hours = _event_hours(d)
            repeats = self.seen_events.repeats(hours, d.event_ids)
            if repeats:
                d = d.without(repeats)
                hours = _event_hours(d)
            self.seen_events.add(hours, d.event_ids, open_after_ms if remember_after_ms is None else remember_after_ms)
        self.watermarks[d.source_partition] = d.source_offset
        windows, dirty, new_window, hour_keys = self.windows, self.dirty, self._window, self._hour_keys
        for hour, (events, pvs, ids) in d.hours.items():
            keys = hour_keys.get(hour)
            if keys is None:
                keys = hour_keys[hour] = _hour_windows(*hour)
            ids = ids.tolist() if isinstance(ids, np.ndarray) else ids  # once for the three windows
            for key, end in keys:
                if open_after_ms is not None and end < open_after_ms:
                    continue
                w = windows.get(key)
                if w is None:
                    w = new_window(key, end, with_visitors=True)
                else:
                    dirty[key] = w
                w.events += events
                w.count += pvs
                w.visitors.add_many(ids)  # type: ignore[union-attr]
        for (site, path, day), n in d.paths.items():
            if open_after_ms is not None and day + DAY_MS < open_after_ms:
                continue
            key = ("path_day", site, path, day)
            w = windows.get(key)
            if w is None:
                w = new_window(key, day + DAY_MS, with_visitors=False)
            else:
                dirty[key] = w
            w.events += n
            w.count += n
        for (tenant, family, day), (events, ids) in d.product.items():
            if open_after_ms is not None and day + DAY_MS < open_after_ms:
                continue
            for key in (("product_family_day", tenant, family, day),
                        ("active_workspaces_day", tenant, "", day),
                        ("active_workspaces_day", "*", "", day)):
                w = self._window(key, day + DAY_MS, with_visitors=True)
                w.events += events
                w.count += events
                w.visitors.add_many(ids)  # type: ignore[union-attr]
        if d.events and d.session_timeout_ms:
            self._apply_sessions(d, open_after_ms)
        return d

    def _apply_sessions(self, d: Delta, open_after_ms: int | None) -> None:
        """Each event joins its visitor's sessions; the sessions it replaced are taken out of
        the session windows and the one it is part of now is put in.

        Two cases make nearly all traffic and are inlined (this loop runs per event): a new
        visitor (a one-event session: counted in), and an event that grows the visitor's last
        session without moving its start or its entry (only what changed is counted: the
        duration, the bounce, the exit page). Anything else goes through Sessions.add."""
        sessions = self.sessions
        last, changes = sessions.last, sessions.changes
        windows, ends, dirty = self.windows, self.ends, self.session_dirty
        timeout = d.session_timeout_ms
        opened = -1 if open_after_ms is None else open_after_ms
        # Every session window this delta changes gets the delta's version (the session events
        # applied through it): monotonic, and the same when a rebuild folds the same deltas.
        version = self.session_events = self.session_events + len(d.events)
        # The new visits' (site, hour, is_pageview): their visits_hour and bounces_hour are
        # counted after the loop, one update per distinct window (Counter's C loop).
        new_hours: list[tuple[str, int, bool]] = []
        for vid, ms, is_pv, path, pend, attrs in d.events:
            site = attrs[0]
            key = (site, vid, pend)
            s = last.get(key)
            if s is None:
                if is_pv:
                    new = last[key] = (ms, ms, 1, 1, 0, ms, path, attrs, 1, ms, path)
                else:
                    new = last[key] = (ms, ms, 0, 1, 1, ms, path, attrs, 0, ms, path)
                changes[(site, vid, pend, ms)] = new
                new_hours.append((site, ms - ms % HOUR_MS, is_pv))
                day = ms - ms % DAY_MS
                if day + DAY_MS >= opened:
                    _add(windows, ends, dirty, ("entry_page_day", site, path, day), day + DAY_MS, 1, version)
                    _add(windows, ends, dirty, ("exit_page_day", site, path, day), day + DAY_MS, 1, version)
                continue
            start, old_end, pvs, evs, ek0, ems, epath, eattrs, xk0, xms, xpath = s
            if start <= ms and ms - old_end < timeout:
                # It reaches the last session only (the others end a timeout before its start).
                ek = 0 if is_pv else 1
                if ek > ek0 or (ek == ek0 and (ms > ems or (ms == ems and (path, attrs) >= (epath, eattrs)))):
                    xk = 1 if is_pv else 0
                    end = ms if ms > old_end else old_end
                    moved = xk > xk0 or (xk == xk0 and (ms > xms or (ms == xms and path > xpath)))
                    now = last[key] = ((start, end, pvs + is_pv, evs + 1, ek0, ems, epath, eattrs, xk, ms, path) if moved
                                       else (start, end, pvs + is_pv, evs + 1, ek0, ems, epath, eattrs, xk0, xms, xpath))
                    changes[(site, vid, pend, start)] = now
                    hour = start - start % HOUR_MS
                    if hour + HOUR_MS >= opened:
                        if ms > old_end:
                            _add(windows, ends, dirty, ("visit_duration_hour", site, "", hour), hour + HOUR_MS,
                                 ms - old_end, version)
                        if pvs == 1 and evs == 1:  # it was a bounce; after this event it is not
                            _add(windows, ends, dirty, ("bounces_hour", site, "", hour), hour + HOUR_MS, -1, version)
                    day = start - start % DAY_MS
                    if moved and path != xpath and day + DAY_MS >= opened:
                        _add(windows, ends, dirty, ("exit_page_day", site, xpath, day), day + DAY_MS, -1, version)
                        _add(windows, ends, dirty, ("exit_page_day", site, path, day), day + DAY_MS, 1, version)
                    continue
            self._apply_session(key, ms, is_pv, path, attrs, timeout, opened)
        for (site, hour, is_pv), n in Counter(new_hours).items():
            if hour + HOUR_MS >= opened:
                _add(windows, ends, dirty, ("visits_hour", site, "", hour), hour + HOUR_MS, n, version)
                if is_pv:
                    _add(windows, ends, dirty, ("bounces_hour", site, "", hour), hour + HOUR_MS, n, version)

    def _apply_session(self, key: tuple[str, int, int], ms: int, is_pv: bool, path: str, attrs: Attrs,
                       timeout: int, opened: int) -> None:
        """One event through Sessions.add: the general case (a merge, a start or entry moved)."""
        was, now = self.sessions.add(key, ms, is_pv, path, attrs, timeout)
        bump = self._bump
        if len(was) == 1 and was[0][0] == now[0] and was[0][6] == now[6]:
            old, start, site = was[0], now[0], attrs[0]
            hour = start - start % HOUR_MS
            if hour + HOUR_MS >= opened:
                if now[1] != old[1]:
                    bump(("visit_duration_hour", site, "", hour), hour + HOUR_MS, now[1] - old[1])
                if _bounce(now) != _bounce(old):
                    bump(("bounces_hour", site, "", hour), hour + HOUR_MS, _bounce(now) - _bounce(old))
            day = start - start % DAY_MS
            if now[10] != old[10] and day + DAY_MS >= opened:
                bump(("exit_page_day", site, old[10], day), day + DAY_MS, -1)
                bump(("exit_page_day", site, now[10], day), day + DAY_MS, 1)
            return
        for s in was:
            self._count_session(s, -1, opened)
        self._count_session(now, 1, opened)

    def _bump(self, key: AggKey, end: int, n: int) -> None:
        """Add n to a session window (created at 0): its version is the session events applied
        through the current delta."""
        _add(self.windows, self.ends, self.session_dirty, key, end, n, self.session_events)

    def _count_session(self, s: Run, sign: int, opened: int) -> None:
        """Add (sign 1) or take out (-1) one session in the windows of its start. The
        session windows are additive over time as well as over partitions (a visit is
        counted once, in the hour it started), so days and months are sums of hours."""
        start, end, entry_path, site, exit_path = s[0], s[1], s[6], s[7][0], s[10]
        bump = self._bump
        hour, day = start - start % HOUR_MS, start - start % DAY_MS
        if hour + HOUR_MS >= opened:
            bump(("visits_hour", site, "", hour), hour + HOUR_MS, sign)
            if _bounce(s):
                bump(("bounces_hour", site, "", hour), hour + HOUR_MS, sign)
            if end != start:
                bump(("visit_duration_hour", site, "", hour), hour + HOUR_MS, sign * (end - start))
        if day + DAY_MS >= opened:
            bump(("entry_page_day", site, entry_path, day), day + DAY_MS, sign)
            bump(("exit_page_day", site, exit_path, day), day + DAY_MS, sign)

    def _window(self, key: AggKey, end: int, with_visitors: bool) -> Window:
        w = self.windows.get(key)
        if w is None:
            w = self.windows[key] = Window(visitors=VisitorSet() if with_visitors else None)
            self.ends[key] = end
        self.dirty[key] = w
        return w

    def aggregate(self, key: AggKey) -> dict[str, Any]:
        w = self.windows[key]
        kind, scope, dimension, start = key
        return {"kind": kind, "scope": scope, "dimension": dimension, "window_start": start,
                "window_end": self.ends[key], "partition": self.partition, "count": w.count,
                "uniques": len(w.visitors) if w.visitors is not None else 0, "version": w.events}

    def take_dirty(self) -> Iterator[dict[str, Any]]:
        for key, _ in self.take_dirty_windows():
            yield self.aggregate(key)

    def take_dirty_windows(self, sessions: bool = True) -> list[tuple[AggKey, Window]]:
        """The windows changed since the last call (in no particular order: each total
        stands alone, and sorting thousands of keys per flush showed in profiles). The
        session windows only with `sessions` (they are kept for the next call otherwise)."""
        dirty, self.dirty = self.dirty, {}
        if sessions and self.session_dirty:
            dirty.update(self.session_dirty)
            self.session_dirty = {}
        return list(dirty.items())

    def prune(self, closed_before_ms: int, forget_ids_before_ms: int | None = None) -> int:
        """Forget windows that ended before closed_before_ms (their totals are final), and the
        event ids of hours that ended before that or before forget_ids_before_ms."""
        self._hour_keys.clear()
        old = [k for k, end in self.ends.items() if end < closed_before_ms]
        for k in old:
            del self.windows[k], self.ends[k]
            self.dirty.pop(k, None)
            self.session_dirty.pop(k, None)
        self.sessions.prune(closed_before_ms)
        self.seen_events.prune(max(closed_before_ms, forget_ids_before_ms or closed_before_ms))
        return len(old)

    def memory_bytes(self) -> int:
        return (sum(w.visitors.nbytes() for w in self.windows.values() if w.visitors is not None)
                + self.seen_events.nbytes())


def _bounce(s: Run) -> int:
    """1 for a bounce (one pageview and no other event), else 0."""
    return 1 if s[2] == 1 and s[3] == 1 else 0


def _add(windows: dict[AggKey, Window], ends: dict[AggKey, int], dirty: dict[AggKey, Window], key: AggKey, end: int,
         n: int, version: int) -> None:
    """Add n to a session window (created at 0, ending at end), now at this version."""
    w = windows.get(key)
    if w is None:
        w = windows[key] = Window()
        ends[key] = end
    w.count += n
    w.events = version
    dirty[key] = w


def _avro_string(v: str) -> bytes:
    raw = v.encode()
    return encode_long(len(raw)) + raw


def aggregate_key(agg: dict[str, Any]) -> bytes:
    return "|".join((agg["kind"], agg["scope"], agg["dimension"], str(agg["window_start"]),
                     str(agg["partition"]))).encode()


class TotalsEncoder:
    """(Kafka key, window_aggregate bytes) of a window's current total, byte-identical to
    codec.encode(state.aggregate(key)). A flush emits thousands of totals, and all but the
    last three fields (count, uniques, version) never change for a window: their encoding
    and the key are made once per window and kept on it."""

    VARYING = ["count", "uniques", "version"]
    SHARED_MAX = 200_000

    def __init__(self, codec: Any) -> None:
        from tally.schemas.avro_writer import encoded, field_writers

        self.codec = codec
        self._encoded = encoded
        schema = codec.latest("window_aggregate").parsed
        self._fields = field_writers(schema)
        self._fixed_names = [f["name"] for f in schema["fields"]][:-3]
        self._varying_last = [f["name"] for f in schema["fields"]][-3:] == self.VARYING
        self._header: bytes | None | bool = False  # found on first use (a registry may be slow)
        self._partition_last = self._fixed_names[-1:] == ["partition"]
        self._shared: dict[tuple[AggKey, int], bytes] = {}  # header + fixed fields but the partition
        self._strings: dict[str, bytes] = {}  # kind, scope or dimension -> its Avro string
        # (kind, window_start, window_end, partition) -> the pieces of a window's wire around its
        # scope and dimension: (header + kind, start + end + partition, b"kind|", b"|start|partition")
        self._frames: dict[tuple[str, int, int, int], tuple[bytes, bytes, bytes, bytes]] = {}
        self._raw: dict[str, bytes] = {}  # scope or dimension -> its UTF-8 bytes (the Kafka key's)
        # The fields' types as window_aggregate v1 has them: the fixed fields are then written
        # directly (strings and varints), not through the general writers. Session windows
        # make a new window for most new visits, so this runs thousands of times per flush.
        types = [(f["name"], f["type"] if isinstance(f["type"], str) else f["type"].get("type")) for f in schema["fields"]]
        self._plain = types == [("kind", "string"), ("scope", "string"), ("dimension", "string"), ("window_start", "long"),
                                ("window_end", "long"), ("partition", "int"), ("count", "long"), ("uniques", "long"),
                                ("version", "long")]

    def _find_header(self) -> bytes | None:
        """The record prefix, or None when totals must go through the codec whole."""
        sample = {"kind": "site_day", "scope": "s", "dimension": "", "window_start": 0, "window_end": 1,
                  "partition": 2, "count": 0, "uniques": 0, "version": 0}
        whole = self.codec.encode("window_aggregate", sample)
        body = self._fixed_body(sample) + b"\x00\x00\x00"
        return whole[:-len(body)] if self._varying_last and whole.endswith(body) else None

    def _fixed_body(self, agg: dict[str, Any]) -> bytes:
        return b"".join(self._encoded(self._fields[name], agg[name]) for name in self._fixed_names)

    def __call__(self, st: PartitionState, key: AggKey, w: Window) -> tuple[bytes, bytes]:
        fixed, agg_key = w.wire or self._wire(st, key, w)
        if fixed is None:
            return agg_key, self.codec.encode("window_aggregate", st.aggregate(key))
        # The header was found, so the last three fields are Avro longs (zigzag varints).
        uniques = len(w.visitors) if w.visitors is not None else 0
        return agg_key, b"".join((fixed, encode_long(w.count), encode_long(uniques), encode_long(w.events)))

    def many(self, st: PartitionState, items: list[tuple[AggKey, Window]]) -> list[tuple[bytes, bytes]]:
        """self(st, key, w) of many windows (a flush's): the varying fields of all of them as
        one vectorised pass of varints, three consecutive ones per window, so one slice each."""
        wires = [w.wire or self._wire(st, key, w) for key, w in items]
        if not wires or wires[0][0] is None:  # the codec path (the header is the same for every window)
            return [self(st, key, w) for key, w in items]
        nums: list[int] = []
        for _, w in items:
            nums += (w.count, len(w.visitors) if w.visitors is not None else 0, w.events)
        data, at = zigzag_packed(np.array(nums, dtype=np.int64))
        return [(agg_key, fixed + data[at[i]:at[i + 3]]) for i, (fixed, agg_key) in zip(range(0, len(nums), 3), wires,
                                                                                          strict=True)]

    def _string(self, value: str) -> bytes:
        return bounded_put(self._strings, value, _avro_string(value), self.SHARED_MAX)

    def _raw_bytes(self, value: str) -> bytes:
        return bounded_put(self._raw, value, value.encode(), self.SHARED_MAX)

    def _frame(self, frame_key: tuple[str, int, int, int]) -> tuple[bytes, bytes, bytes, bytes]:
        kind, start, end, partition = frame_key
        return bounded_put(self._frames, frame_key, (
            self._header + (self._strings.get(kind) or self._string(kind)),  # type: ignore[operator]
            encode_long(start) + encode_long(end) + encode_long(partition),
            f"{kind}|".encode(), f"|{start}|{partition}".encode()), self.SHARED_MAX)

    def _wire(self, st: PartitionState, key: AggKey, w: Window) -> tuple[bytes | None, bytes]:
        """The window's (encoded fixed fields, Kafka key), made once and kept on it (w.wire);
        fixed is None when totals must go through the codec whole."""
        if self._header is False:
            self._header = self._find_header()
        if w.wire is None and self._plain and self._header is not None:
            # From cached pieces: with sessions on, this runs about once per new visit (its
            # entry and exit page windows), so all but the scope and dimension are one piece.
            kind, scope, dimension, start = key
            strings, raw, frame_key = self._strings, self._raw, (kind, start, st.ends[key], st.partition)
            frame = self._frames.get(frame_key) or self._frame(frame_key)
            w.wire = (b"".join((frame[0], strings.get(scope) or self._string(scope),
                                strings.get(dimension) or self._string(dimension), frame[1])),
                      b"".join((frame[2], raw.get(scope) or self._raw_bytes(scope), b"|",
                                raw.get(dimension) or self._raw_bytes(dimension), frame[3])))
        if w.wire is None:
            agg = {"kind": key[0], "scope": key[1], "dimension": key[2], "window_start": key[3],
                   "window_end": st.ends[key], "partition": st.partition}
            if self._header is None:
                fixed = None
            elif self._partition_last:
                # The same window exists in every partition: encode its fields once for all.
                shared = self._shared.get((key, agg["window_end"]))
                if shared is None:
                    shared = bounded_put(self._shared, (key, agg["window_end"]), self._header + b"".join(
                        self._encoded(self._fields[name], agg[name]) for name in self._fixed_names[:-1]),
                        self.SHARED_MAX)
                fixed = shared + self._encoded(self._fields["partition"], st.partition)
            else:
                fixed = self._header + self._fixed_body(agg)
            w.wire = (fixed, aggregate_key(agg))
        return w.wire
