"""Sessions (visits) of one stream partition, built incrementally and independent of the
order in which events arrive.

A session is a maximal run of one visitor's events (same site, same salt period) in which
consecutive events are less than the timeout apart. For a given set of events that
partition is unique (single-linkage clustering of points on a line), so adding events in
any order gives the same sessions: an event joins every session it comes within the
timeout of, merging them. Replays, rebalances and rebuilds from the changelog may apply
the same deltas in another interleaving; the sessions, and so the session aggregates,
come out the same, which is what makes them exact (tests/test_sessions.py).

Every summary of a session merges associatively: start = min, end = max, counts add, the
entry is the smallest (not-a-pageview, time, path, attributes) key and the exit the
largest (is-a-pageview, time, path) key, so ties between equal timestamps are broken by
value, never by arrival.

The session ends at the salt-period boundary too: the period's end is part of its key (the
visitor id changes there anyway, unless the period is a month and the session is not).
"""

from __future__ import annotations

from dataclasses import dataclass

# (site, referrer_source, referrer_host, utm_source, utm_medium, utm_campaign, device, browser, os,
# country, utm_content, utm_term) of the event: a session keeps its entry pageview's. Missing
# values are "". With sessions off, the attributes are (site,).
Attrs = tuple[str, ...]
ATTRS_LEN = 12


def session_attrs(values: list[str] | tuple[str, ...]) -> Attrs:
    """Attributes read back from a changelog or delta; those written before utm_content and
    utm_term were kept (10 values) get "" for both."""
    return (*values, "", "") if len(values) == ATTRS_LEN - 2 else tuple(values)
VisitorKey = tuple[str, int, int]  # site, visitor id (unsigned 64 bits), period end (ms)
SessionKey = tuple[str, int, int, int]  # site, visitor id, period end, session start (ms)


@dataclass(slots=True)
class Session:
    start: int
    end: int
    pageviews: int
    events: int
    entry: tuple[int, int, str, Attrs]  # (0 for a pageview else 1, ms, path, attrs): the smallest wins
    exit: tuple[int, int, str]  # (1 for a pageview else 0, ms, path): the largest wins

    @property
    def bounce(self) -> bool:
        """One pageview and no other (interaction) event."""
        return self.pageviews == 1 and self.events == 1

    @property
    def duration_ms(self) -> int:
        return self.end - self.start

    @property
    def attrs(self) -> Attrs:
        return self.entry[3]

    def absorb(self, other: Session) -> None:
        self.start = min(self.start, other.start)
        self.end = max(self.end, other.end)
        self.pageviews += other.pageviews
        self.events += other.events
        self.entry = min(self.entry, other.entry)
        self.exit = max(self.exit, other.exit)


def one_event(ms: int, is_pv: bool, path: str, attrs: Attrs) -> Session:
    return Session(ms, ms, int(is_pv), 1, (0 if is_pv else 1, ms, path, attrs), (1 if is_pv else 0, ms, path))


class Sessions:
    """The sessions of one partition's visitors: per visitor key, a list of sessions sorted by
    start, each at least the timeout apart from the next.

    `add` returns the sessions an event replaced and the one it is now part of, so the caller
    can take the replaced ones out of its aggregates and put the new one in. Changed and
    removed sessions are remembered until `take_changes` (the session rows to emit)."""

    def __init__(self) -> None:
        self.visitors: dict[VisitorKey, list[Session]] = {}
        # session key -> the session now (None: it no longer exists under that key)
        self.changes: dict[SessionKey, Session | None] = {}

    def add(self, key: VisitorKey, ms: int, is_pv: bool, path: str, attrs: Attrs,
            timeout_ms: int) -> tuple[list[Session], Session]:
        runs = self.visitors.get(key)
        new = one_event(ms, is_pv, path, attrs)
        if runs is None:
            self.visitors[key] = [new]
            self.changes[(*key, ms)] = new
            return [], new
        # The sessions this event reaches: those with start - timeout < ms < end + timeout.
        # The runs are sorted and far apart, so they are adjacent, and nearly always the last:
        # then it grows in place (the same result as absorbing one_event, without building it).
        last = runs[-1]
        if (last.start - timeout_ms < ms and ms - last.end < timeout_ms
                and (len(runs) == 1 or ms - runs[-2].end >= timeout_ms)):
            was = Session(last.start, last.end, last.pageviews, last.events, last.entry, last.exit)
            if ms < last.start:
                last.start = ms
                self.changes[(*key, was.start)] = None
            elif ms > last.end:
                last.end = ms
            last.pageviews += is_pv
            last.events += 1
            entry, exit_ = (0 if is_pv else 1, ms, path, attrs), (1 if is_pv else 0, ms, path)
            if entry < last.entry:
                last.entry = entry
            if exit_ > last.exit:
                last.exit = exit_
            self.changes[(*key, last.start)] = last
            return [was], last
        hi = len(runs)
        while hi and runs[hi - 1].start - timeout_ms >= ms:
            hi -= 1
        lo = hi
        while lo and ms - runs[lo - 1].end < timeout_ms:
            lo -= 1
        old = runs[lo:hi]
        if not old:
            runs.insert(lo, new)
            self.changes[(*key, ms)] = new
            return [], new
        before = [(s.start, s.end, s.pageviews, s.events, s.entry, s.exit) for s in old]
        merged = old[0]
        for s in old[1:]:
            merged.absorb(s)
        merged.absorb(new)
        runs[lo:hi] = [merged]
        # What the caller must take out: the old sessions as they were (merged is reused).
        was = [Session(*b) for b in before]
        for s in was:
            self.changes[(*key, s.start)] = None
        self.changes[(*key, merged.start)] = merged
        return was, merged

    def take_changes(self) -> dict[SessionKey, Session | None]:
        changes, self.changes = self.changes, {}
        return changes

    def prune(self, closed_before_ms: int) -> int:
        """Forget the visitors whose period ended before closed_before_ms."""
        old = [k for k in self.visitors if k[2] < closed_before_ms]
        for k in old:
            del self.visitors[k]
        return len(old)

    def __len__(self) -> int:
        return sum(len(v) for v in self.visitors.values())


def sessionize(events: list[tuple[int, bool, str, Attrs]], timeout_ms: int) -> list[Session]:
    """The sessions of one visitor key's events, in one pass over them sorted by time: the
    batch definition that `Sessions.add` maintains incrementally (and the recomputation the
    tests and `tally reconcile` compare with)."""
    out: list[Session] = []
    for ms, is_pv, path, attrs in sorted(events, key=lambda e: e[0]):
        ev = one_event(ms, is_pv, path, attrs)
        if out and ms - out[-1].end < timeout_ms:
            out[-1].absorb(ev)
        else:
            out.append(ev)
    return out
