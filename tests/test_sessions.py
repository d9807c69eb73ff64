"""Sessions in the window state (streams/sessions.py, windows.PartitionState): the incremental
sessions equal a batch sessionisation of the same events whatever the order they arrive in,
and the session windows equal the recomputation from the events."""

from __future__ import annotations

import random
from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st
from tally.schemas.codec import default_codec
from tally.streams import beacons as stage1
from tally.streams.projection import reader
from tally.streams.sessions import Sessions, one_event, session, sessionize
from tally.streams.windows import Delta, PartitionState, pageview_attrs, pageview_delta, period_end

from tests.stream_support import expected_sessions
from tests.test_stream_wire import SALT, _batch

MIN = 60_000
T = 30 * MIN
BASE = int(datetime(2026, 11, 20, 12, 0, tzinfo=UTC).timestamp() * 1000)
ATTRS = ("a.com", "direct", "", "", "", "", "desktop", "Firefox", "Linux", "", "", "")


def _state_of(events: list[tuple[int, int, bool, str]], timeout: int = T, chunk: int = 3,
              order: random.Random | None = None) -> PartitionState:
    """Apply (visitor, ms, is_pageview, path) events as deltas of `chunk` events each."""
    rows = [(vid, ms, pv, path, period_end(ms, "day"), ATTRS) for vid, ms, pv, path in events]
    if order is not None:
        order.shuffle(rows)
    st = PartitionState(0)
    for o, i in enumerate(range(0, len(rows), chunk)):
        st.apply(Delta(0, o, session_timeout_ms=timeout, events=rows[i:i + chunk]))
    return st


def _windows(st: PartitionState) -> dict[tuple[str, str, str, int], int]:
    kinds = {"visits_hour", "bounces_hour", "visit_duration_hour", "entry_page_day", "exit_page_day"}
    return {k: w.count for k, w in st.windows.items() if k[0] in kinds and w.count}


def test_acceptance_visits_bounces_and_durations():
    st = _state_of([
        (1, BASE, True, "/a1"), (1, BASE + 5 * MIN, True, "/a2"), (1, BASE + 10 * MIN, True, "/a3"),  # A
        (2, BASE, True, "/b"),  # B
        (3, BASE, True, "/c1"), (3, BASE + 40 * MIN, True, "/c2"),  # C
    ])
    runs = {k[1]: [session(s) for s in v] for k, v in st.sessions.visitors().items()}
    (a,) = runs[1]
    assert (a.pageviews, a.bounce, a.duration_ms, a.entry[2], a.exit[2]) == (3, False, 10 * MIN, "/a1", "/a3")
    (b,) = runs[2]
    assert b.bounce and b.duration_ms == 0
    assert [(s.entry[2], s.bounce) for s in runs[3]] == [("/c1", True), ("/c2", True)]
    hour = BASE - BASE % 3600_000
    w = _windows(st)
    assert w[("visits_hour", "a.com", "", hour)] == 4  # A, B and C's two
    assert w[("bounces_hour", "a.com", "", hour)] == 3  # B and C's two
    assert w[("visit_duration_hour", "a.com", "", hour)] == 10 * MIN


def test_a_session_ends_at_the_period_boundary():
    midnight = BASE - BASE % 86_400_000 + 86_400_000
    st = _state_of([(9, midnight - 10 * MIN, True, "/late"), (9, midnight + 10 * MIN, True, "/early")])
    assert sorted(len(v) for v in st.sessions.visitors().values()) == [1, 1]  # two visits, one per day


def test_a_late_event_merges_two_sessions_and_the_windows_follow():
    st = _state_of([(1, BASE, True, "/x"), (1, BASE + 40 * MIN, False, "/y")], chunk=1)
    assert len(_windows(st)) and sum(v for k, v in _windows(st).items() if k[0] == "visits_hour") == 2
    st.apply(Delta(0, 99, session_timeout_ms=T, events=[(1, BASE + 20 * MIN, True, "/m", period_end(BASE, "day"),
                                                        ATTRS)]))
    w = _windows(st)
    assert sum(v for k, v in w.items() if k[0] == "visits_hour") == 1
    assert w[("entry_page_day", "a.com", "/x", BASE - BASE % 86_400_000)] == 1
    assert w[("exit_page_day", "a.com", "/m", BASE - BASE % 86_400_000)] == 1  # the last *pageview*
    assert ("bounces_hour", "a.com", "", BASE - BASE % 3600_000) not in w


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300), st.booleans(), st.sampled_from(["/a", "/b", "/c"])),
                max_size=40),
       st.integers(0, 2**32), st.integers(1, 5))
def test_sessions_do_not_depend_on_the_order_of_arrival(raw, seed, chunk):
    events = [(vid, BASE + minute * MIN, pv, path) for vid, minute, pv, path in raw]
    st = _state_of(events, order=random.Random(seed), chunk=chunk)
    for vid in {e[0] for e in events}:
        want = sessionize([(ms, pv, path, ATTRS) for v, ms, pv, path in events if v == vid], T)
        (got,) = [runs for k, runs in st.sessions.visitors().items() if k[1] == vid]
        assert [session(s) for s in got] == want
    assert _windows(st) == _windows(_state_of(events))  # and neither do the windows
    # the windows equal the batch recomputation (the one the stream tests compare with)
    assert _windows(st) == expected_sessions((("a.com", vid, ms, pv, path) for vid, ms, pv, path in events), T // 1000)


class GeneralPath(PartitionState):
    """Every event through Sessions.add, none through the inlined cases of _apply_sessions."""

    def _apply_sessions(self, d: Delta, open_after_ms: int | None) -> None:
        self.session_events += len(d.events)  # the delta's version, as _apply_sessions sets it
        for vid, ms, is_pv, path, pend, attrs in d.events:
            self._apply_session((attrs[0], vid, pend), ms, is_pv, path, attrs, d.session_timeout_ms,
                                -1 if open_after_ms is None else open_after_ms)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 300), st.booleans(), st.sampled_from(["/a", "/b", "/c"]),
                          st.sampled_from([ATTRS, ("a.com", "search", "www.google.com", *ATTRS[3:])])), max_size=40),
       st.integers(0, 2**32), st.integers(1, 5), st.sampled_from([None, BASE + 60 * MIN, BASE + 26 * 60 * MIN]))
def test_the_inlined_cases_change_what_the_general_path_changes(raw, seed, chunk, opened):
    """Same windows (counts and versions), sessions and session changes, closed windows included."""
    rows = [(vid, BASE + minute * MIN, pv, path, period_end(BASE + minute * MIN, "day"), attrs)
            for vid, minute, pv, path, attrs in raw]
    random.Random(seed).shuffle(rows)
    ours, general = PartitionState(0), GeneralPath(0)
    for o, i in enumerate(range(0, len(rows), chunk)):
        for state in (ours, general):
            state.apply(Delta(0, o, session_timeout_ms=T, events=rows[i:i + chunk]), open_after_ms=opened)
        assert ours.sessions.take_changes() == general.sessions.take_changes()
        assert sorted(k for k, _ in ours.take_dirty_windows()) == sorted(k for k, _ in general.take_dirty_windows())
    assert {k: (w.count, w.events) for k, w in ours.windows.items()} == \
        {k: (w.count, w.events) for k, w in general.windows.items()}
    assert ours.sessions.visitors() == general.sessions.visitors()


def test_session_changes_name_removed_and_current_sessions():
    s = Sessions()
    key = ("a.com", 1, period_end(BASE, "day"))
    s.add(key, BASE, True, "/x", ATTRS, T)
    s.add(key, BASE + 40 * MIN, True, "/y", ATTRS, T)
    s.take_changes()
    s.add(key, BASE - 10 * MIN, True, "/w", ATTRS, T)  # extends the first session earlier: a new start
    changes = s.take_changes()
    assert changes[(*key, BASE)] is None and session(changes[(*key, BASE - 10 * MIN)]).entry[2] == "/w"


def test_session_input_survives_the_delta_bytes_and_both_stage1_paths_agree():
    codec = default_codec()
    now = datetime.now(UTC)
    cfg = stage1.Stage1Config(partitions=3, salt_period="day", lateness_ms=48 * 3600_000, session_timeout_ms=T)
    fast = stage1.FastStage1(codec, cfg)
    read_pvs = reader(codec, "pageview_batch", None)
    body, items = fast.read(codec.encode("beacon_batch", {"items": _batch(random.Random(4), now, 200)}))
    now_ms = int(now.timestamp() * 1000)
    out = fast.process(body, items, 0, 9, {p: SALT for p in fast.periods_needed(items, now_ms)}, now_ms)
    assert out.enriched
    for p, value in out.enriched:
        ours, theirs = Delta.decode(out.deltas[p]), pageview_delta(read_pvs(value), T, "day")
        assert ours.session_timeout_ms == T and ours.events and ours.events == theirs.events
        assert Delta.decode(theirs.encode()).events == theirs.events


def test_engagement_events_are_stored_but_count_in_no_window_or_session():
    codec = default_codec()
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    cfg = stage1.Stage1Config(partitions=3, salt_period="day", lateness_ms=48 * 3600_000, session_timeout_ms=T)
    fast = stage1.FastStage1(codec, cfg)
    read_pvs = reader(codec, "pageview_batch", None)
    items = _batch(random.Random(5), now, 300)
    for i, b in enumerate(items[::3]):
        b.update(event="engagement", props={"tally:engaged_ms": str(1000 * i), "tally:scroll_depth": "50"})
    body, raw = fast.read(codec.encode("beacon_batch", {"items": items}))
    out = fast.process(body, raw, 0, 11, {p: SALT for p in fast.periods_needed(raw, now_ms)}, now_ms)
    stored = counted = 0
    for p, value in out.enriched:
        pvs = read_pvs(value)["items"]
        stored += sum(pv["event"] == "engagement" for pv in pvs)
        ours, theirs = Delta.decode(out.deltas[p]), pageview_delta(read_pvs(value), T, "day")
        assert ours.events == theirs.events
        assert {k: (e, v, sorted(ids)) for k, (e, v, ids) in ours.hours.items()} == {
            k: (e, v, sorted(ids)) for k, (e, v, ids) in theirs.hours.items()}
        others = len(pvs) - sum(pv["event"] == "engagement" for pv in pvs)
        assert len(ours.events) == others == sum(e for e, _, _ in ours.hours.values())
        counted += others
    assert stored > 30 and counted > 60  # every engagement event is stored, none is counted


def test_sessions_keep_the_entry_utm_content_and_term_and_read_older_deltas():
    from tally.streams.session_rows import session_record

    codec = default_codec()
    pv = {"site": "a.com", "referrer_source": "direct", "referrer_host": "", "utm_source": "ads", "utm_medium": None,
          "utm_campaign": None, "utm_content": "banner", "utm_term": "snow boots", "device": "desktop",
          "browser": "Firefox", "os": "Linux", "country": ""}
    attrs = pageview_attrs(pv)
    s = Sessions()
    key = ("a.com", 7, period_end(BASE, "day"))
    s.add(key, BASE, True, "/in", attrs, T)
    s.add(key, BASE + MIN, True, "/next", ATTRS, T)  # a later pageview without them: the entry's stay
    (skey, sess), = s.take_changes().items()
    record = codec.decode("session", codec.encode("session", session_record(0, 1, skey, sess)))
    assert (record["utm_source"], record["utm_content"], record["utm_term"]) == ("ads", "banner", "snow boots")
    # A delta written before utm_content and utm_term were kept has 10 attributes per event:
    # it reads back with both empty, and its sessions encode.
    old = Delta(0, 1, session_timeout_ms=T, events=[(7, BASE, True, "/in", period_end(BASE, "day"), ATTRS[:10])])
    (*_, read), = Delta.decode(old.encode()).events
    assert read == ATTRS
    s.add(key, BASE - MIN, True, "/old", read, T)
    (skey, sess), = ((k, v) for k, v in s.take_changes().items() if v is not None)
    assert session_record(0, 2, skey, sess)["utm_content"] == ""


def test_deltas_with_the_attributes_as_lists_read_as_before():
    """Deltas written before the attributes went as JSON texts carry them as lists."""
    import struct

    import orjson

    pend = period_end(BASE, "day")
    d = Delta(0, 1, session_timeout_ms=T, events=[(7, BASE, True, "/in", pend, ATTRS),
                                                  (8, BASE, True, "/in", pend, ATTRS[:10])])
    raw = d.encode()
    (n,) = struct.unpack_from(">I", raw)
    head = orjson.loads(raw[4:4 + n])
    assert all(isinstance(a, str) for a in head["x"]["a"])
    head["x"]["a"] = [orjson.loads(a) for a in head["x"]["a"]]
    old = orjson.dumps(head)
    read = Delta.decode(struct.pack(">I", len(old)) + old + raw[4 + n:])
    assert read.events == Delta.decode(raw).events == [(7, BASE, True, "/in", pend, ATTRS), (8, BASE, True, "/in", pend, ATTRS)]


def _some_changes() -> dict:
    s = Sessions()
    attrs = ("b\u00fccher.example", "search", "www.google.com", "news", "", "winter", "mobile", "Mobile Safari", "iOS", "DE",
             "banner", "snow boots")
    for vid in (1, 2**63 + 5, 2**64 - 1):
        key = ("b\u00fccher.example", vid, period_end(BASE, "day"))
        s.add(key, BASE, True, "/x", attrs, T)
        s.add(key, BASE + 5 * MIN, False, "/y", ATTRS, T)
        s.add(key, BASE - 5 * MIN, True, "/w", ATTRS, T)  # moves the start: the old key is removed
    changes = s.take_changes()
    assert None in changes.values()
    return changes


def test_session_batches_are_byte_identical_to_the_codec():
    from tally.streams.session_rows import SessionEncoder, session_record

    codec = default_codec()
    encode = SessionEncoder(codec)
    assert encode.fast
    changes = _some_changes()
    for partition, version in ((0, 0), (3, 17), (300, 2**40)):
        ((key, value),) = encode.batches(partition, version, changes)
        assert key == f"{partition}|{version}|0".encode()
        records = [session_record(partition, version, k, sess) for k, sess in changes.items()]
        assert value == codec.encode("session_batch", {"items": records})
        assert [r["deleted"] for r in codec.decode("session_batch", value)["items"]] == [s is None for s in changes.values()]
    assert encode.batches(0, 1, {}) == []


def test_a_flush_of_many_sessions_is_split_into_records_of_bounded_size():
    from tally.streams.session_rows import SessionEncoder, session_record

    codec = default_codec()
    encode = SessionEncoder(codec)
    encode.RECORD_BYTES = 300  # a few rows per record
    changes = {("a.com", vid, 0, BASE): one_event(BASE, True, f"/p{vid}", ATTRS) for vid in range(50)}
    got = encode.batches(2, 9, changes)
    assert [k for k, _ in got] == [f"2|9|{i}".encode() for i in range(len(got))] and len(got) > 5
    assert all(len(v) < 300 + 200 for _, v in got)
    items = [r for _, v in got for r in codec.decode("session_batch", v)["items"]]
    assert items == [codec.decode("session", codec.encode("session", session_record(2, 9, k, s))) for k, s in changes.items()]


def test_the_fast_encoder_refuses_session_attributes_of_the_wrong_length():
    """A short attribute tuple would shift every later field of the row: refused, not written."""
    import pytest
    from tally.streams.session_rows import SessionEncoder

    encode = SessionEncoder(default_codec())
    assert encode.fast
    short = one_event(BASE, True, "/", ATTRS[:-1])
    with pytest.raises(ValueError, match="session attributes have"):
        encode.batches(0, 1, {("a.com", 1, 0, BASE): short})


def test_session_windows_wait_for_the_session_flush_and_a_visit_changed_twice_is_one_row():
    """Totals flushes without sessions (TALLY_SESSION_FLUSH_SECONDS not due) leave the session
    windows and changed sessions marked: the next session flush has them all, each once, with
    the totals of both deltas."""
    st = PartitionState(0)
    pend = period_end(BASE, "day")
    st.apply(Delta(0, 0, session_timeout_ms=T, events=[(1, BASE, True, "/a", pend, ATTRS)]))
    plain = {k for k, _ in st.take_dirty_windows(sessions=False)}
    assert plain == set() and st.session_dirty  # a delta without hours: only session windows changed
    st.apply(Delta(0, 1, session_timeout_ms=T, events=[(1, BASE + 5 * MIN, True, "/b", pend, ATTRS)]))
    assert not st.take_dirty_windows(sessions=False)
    due = {k: (w.count, w.events) for k, w in st.take_dirty_windows(sessions=True)}
    hour, day = BASE - BASE % 3600_000, BASE - BASE % 86_400_000
    assert due[("visits_hour", "a.com", "", hour)] == (1, 1)
    assert due[("bounces_hour", "a.com", "", hour)] == (0, 2)  # a bounce, then not: the last version
    assert due[("visit_duration_hour", "a.com", "", hour)] == (5 * MIN, 2)
    assert due[("exit_page_day", "a.com", "/a", day)] == (0, 2) and due[("exit_page_day", "a.com", "/b", day)] == (1, 2)
    (run,) = st.sessions.take_changes().values()  # one row for the visit's two changes
    visit = session(run)
    assert (visit.pageviews, visit.entry[2], visit.exit[2]) == (2, "/a", "/b")
    assert not st.take_dirty_windows(sessions=True) and not st.session_dirty
