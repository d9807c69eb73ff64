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

from typing import NamedTuple

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
Entry = tuple[int, int, str, Attrs]  # (0 for a pageview else 1, ms, path, attrs): the smallest wins
Exit = tuple[int, int, str]  # (1 for a pageview else 0, ms, path): the largest wins
# A session as the state holds it: one flat plain tuple, (start, end, pageviews, events,
# *entry, *exit). Every container object the state keeps per visit costs the garbage
# collector's passes (~0.3 us each, bench/stream_offline.py); plain tuples of ints and strings
# are untracked after its first look, objects and lists never are.
Run = tuple[int, int, int, int, int, int, str, Attrs, int, int, str]
ENTRY, EXIT = slice(4, 8), slice(8, 11)


class Session(NamedTuple):
    """A session with names: what a Run reads as (`session(run)`)."""

    start: int
    end: int
    pageviews: int
    events: int
    entry: Entry
    exit: Exit

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


def session(run: Run) -> Session:
    return Session(run[0], run[1], run[2], run[3], run[ENTRY], run[EXIT])  # type: ignore[arg-type]


def one_event(ms: int, is_pv: bool, path: str, attrs: Attrs) -> Run:
    return (ms, ms, 1 if is_pv else 0, 1, 0 if is_pv else 1, ms, path, attrs, 1 if is_pv else 0, ms, path)


def merged(a: Run, b: Run) -> Run:
    """One session of two (every summary merges associatively)."""
    return (min(a[0], b[0]), max(a[1], b[1]), a[2] + b[2], a[3] + b[3], *min(a[ENTRY], b[ENTRY]),
            *max(a[EXIT], b[EXIT]))  # type: ignore[return-value]


class Sessions:
    """The sessions of one partition's visitors: per visitor key its last session (by start)
    in `last`, and its earlier ones, if any, in `earlier` (sorted by start, each at least the
    timeout apart from the next): one dict entry and one tuple for nearly every visitor.

    `add` returns the sessions an event replaced and the one it is now part of, so the caller
    can take the replaced ones out of its aggregates and put the new one in. Changed and
    removed sessions are remembered until `take_changes` (the session rows to emit)."""

    def __init__(self) -> None:
        self.last: dict[VisitorKey, Run] = {}
        self.earlier: dict[VisitorKey, tuple[Run, ...]] = {}
        # session key -> the session now (None: it no longer exists under that key)
        self.changes: dict[SessionKey, Run | None] = {}

    def runs(self, key: VisitorKey) -> tuple[Run, ...]:
        """A visitor's sessions, sorted by start."""
        last = self.last.get(key)
        return () if last is None else (*self.earlier.get(key, ()), last)

    def visitors(self) -> dict[VisitorKey, tuple[Run, ...]]:
        """Every visitor's sessions (for tests and checks: it builds a dict)."""
        return {k: self.runs(k) for k in self.last}

    def add(self, key: VisitorKey, ms: int, is_pv: bool, path: str, attrs: Attrs,
            timeout_ms: int) -> tuple[list[Run], Run]:
        new = one_event(ms, is_pv, path, attrs)
        runs = self.runs(key)
        # The sessions this event reaches: those with start - timeout < ms < end + timeout.
        # The runs are sorted and far apart, so they are adjacent (nearly always the last).
        hi = len(runs)
        while hi and runs[hi - 1][0] - timeout_ms >= ms:
            hi -= 1
        lo = hi
        while lo and ms - runs[lo - 1][1] < timeout_ms:
            lo -= 1
        old = list(runs[lo:hi])
        now = new
        for s in old:
            now = merged(s, now)
        runs = (*runs[:lo], now, *runs[hi:])
        self.last[key] = runs[-1]
        if len(runs) > 1:
            self.earlier[key] = runs[:-1]
        else:
            self.earlier.pop(key, None)
        for s in old:
            self.changes[(*key, s[0])] = None
        self.changes[(*key, now[0])] = now
        return old, now

    def take_changes(self) -> dict[SessionKey, Run | None]:
        changes, self.changes = self.changes, {}
        return changes

    def prune(self, closed_before_ms: int) -> int:
        """Forget the visitors whose period ended before closed_before_ms."""
        old = [k for k in self.last if k[2] < closed_before_ms]
        for k in old:
            del self.last[k]
            self.earlier.pop(k, None)
        return len(old)

    def __len__(self) -> int:
        return len(self.last) + sum(len(v) for v in self.earlier.values())


def sessionize(events: list[tuple[int, bool, str, Attrs]], timeout_ms: int) -> list[Session]:
    """The sessions of one visitor key's events, in one pass over them sorted by time: the
    batch definition that `Sessions.add` maintains incrementally (and the recomputation the
    tests and `tally reconcile` compare with)."""
    out: list[Run] = []
    for ms, is_pv, path, attrs in sorted(events, key=lambda e: e[0]):
        ev = one_event(ms, is_pv, path, attrs)
        if out and ms - out[-1][1] < timeout_ms:
            out[-1] = merged(out[-1], ev)
        else:
            out.append(ev)
    return [session(s) for s in out]
