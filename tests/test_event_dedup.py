"""Stage 2 counts each event_id once (windows.PartitionState.apply, streams/idsets.py): a
batch the collector replays (the same beacons in another input record) changes no window
and no session, whether it repeats a batch whole, in part, or an event within itself; the
changelog of what was applied rebuilds the same state; the ids held are forgotten with
their windows."""

from __future__ import annotations

import random
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tally.schemas.codec import default_codec
from tally.streams import beacons as stage1
from tally.streams.idsets import SeenEvents, by_hour
from tally.streams.projection import reader
from tally.streams.state import fold, pack
from tally.streams.windows import HOUR_MS, Delta, PartitionState, pageview_delta

from tally.ids import fingerprints, uuid7
from tests.stream_support import SESSION_KINDS
from tests.test_stream_wire import SALT, _batch

T = 1800_000
BASE = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)
PATHS = ("/", "/a", "/b", "/c")


def _pvs(n: int, seed: int) -> list[dict]:
    """n pageviews and events of 12 visitors over two hours (so sessions merge and windows span hours)."""
    rnd = random.Random(seed)
    return [{"event_id": uuid7(), "site": "a.com", "path": rnd.choice(PATHS),
             "event": rnd.choice(("pageview", "pageview", "signup")), "visitor_id": rnd.randrange(12),
             "received_at": BASE + timedelta(seconds=rnd.randrange(7200)), "referrer_source": "direct",
             "referrer_host": "", "utm_source": None, "utm_medium": None, "utm_campaign": None,
             "device": "desktop", "browser": "Firefox", "os": "Linux", "country": ""} for _ in range(n)]


def _delta(items: list[dict], offset: int, timeout: int, partition: int = 0) -> Delta:
    return pageview_delta({"source_partition": partition, "source_offset": offset, "items": items}, timeout)


def _state(batches: list[list[dict]], timeout: int) -> tuple[PartitionState, list[bytes]]:
    """The state after applying the batches as input records 0, 1, ..., and its changelog."""
    st = PartitionState(0)
    log = []
    for o, items in enumerate(batches):
        applied = st.apply(_delta(items, o, timeout))
        assert applied is not None
        log.append(pack([applied]))
    return st, log


def _totals(st: PartitionState) -> dict:
    """Each window's (count, uniques, version); of the session windows, the non-zero counts
    (their versions and emptied windows depend on the arrival order)."""
    out: dict = {}
    for k, w in st.windows.items():
        if k[0] in SESSION_KINDS:
            if w.count:
                out[k] = w.count
        else:
            out[k] = (w.count, len(w.visitors) if w.visitors is not None else 0, w.events)
    return out


def _sessions(st: PartitionState) -> dict:
    return st.sessions.visitors()


@pytest.mark.parametrize("timeout", [T, 0])
def test_a_replayed_batch_counts_once_and_the_changelog_rebuilds_the_same_state(timeout):
    first, second = _pvs(60, 1), _pvs(40, 2)
    once, _ = _state([first, second], timeout)
    # The collector replays `first` after Kafka had it: the same beacons in a later input record.
    twice, log = _state([first, second, first], timeout)
    assert _totals(twice) == _totals(once) and _sessions(twice) == _sessions(once)
    assert twice.seen_events.count == 100
    # Its changelog record is the delta as applied (no event): a rebuild reaches the same state.
    replay = Delta.decode(log[2][4:])
    assert (replay.source_offset, replay.events, replay.event_ids, replay.hours) == (2, [], [], {})
    rebuilt = fold(0, log)
    assert _totals(rebuilt) == _totals(once) and _sessions(rebuilt) == _sessions(once)
    # ...and the stage-1 deltas written whole (a zombie's, say) are deduplicated by the rebuild too.
    whole = [pack([_delta(b, o, timeout)]) for o, b in enumerate([first, second, first])]
    assert _totals(fold(0, whole)) == _totals(once)


@pytest.mark.parametrize("timeout", [T, 0])
def test_a_partly_repeated_batch_adds_only_its_new_events(timeout):
    old, new = _pvs(50, 3), _pvs(30, 4)
    mixed = old[::2] + new + old[:5]  # some old ones, the new ones, one old one twice
    st = PartitionState(0)
    st.apply(_delta(old, 0, timeout))
    applied = st.apply(_delta(mixed, 1, timeout))
    assert applied.event_ids == fingerprints([pv["event_id"].encode() for pv in new])
    # The delta applied is the one stage 1 would have built from the new events alone.
    alone = _delta(new, 1, timeout)
    assert (applied.paths, applied.events) == (alone.paths, alone.events)
    assert {k: (e, p, sorted(ids)) for k, (e, p, ids) in applied.hours.items()} == \
        {k: (e, p, sorted(ids)) for k, (e, p, ids) in alone.hours.items()}
    assert _totals(st) == _totals(_state([old + new], timeout)[0])


def test_an_event_twice_in_one_batch_counts_once():
    items = _pvs(20, 5)
    st = PartitionState(0)
    applied = st.apply(_delta(items + items[3:4], 0, T))
    assert len(applied.events) == 20
    assert _totals(st) == _totals(_state([items], T)[0])


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 10**6), repeats=st.lists(st.tuples(st.integers(0, 5), st.integers(0, 40),
                                                                 st.integers(1, 40)), max_size=6))
def test_any_replays_in_any_order_count_each_event_once(seed, repeats):
    """Six batches, plus slices of them replayed (as input records of other source
    partitions), interleaved at random (each source partition's records in their order): the
    state equals the six batches applied once."""
    batches = [_pvs(30, seed + i) for i in range(6)]
    rnd = random.Random(seed)
    sources: list[list[tuple[int, int, list[dict]]]] = [[(0, o, b) for o, b in enumerate(batches)], [], []]
    for o, (b, lo, n) in enumerate(repeats):
        p = rnd.choice((1, 2))
        sources[p].append((p, o, batches[b][lo:lo + n]))
    records = []
    while any(sources):
        records.append(rnd.choice([s for s in sources if s]).pop(0))
    st = PartitionState(0)
    for partition, offset, items in records:
        st.apply(_delta(items, offset, T, partition))
    assert _totals(st) == _totals(_state(batches, T)[0])
    assert _sessions(st) == _sessions(_state(batches, T)[0])


def test_event_ids_survive_the_changelog_encoding_and_old_deltas_have_none():
    items = _pvs(30, 6)
    for timeout in (T, 0):
        d = _delta(items, 7, timeout)
        back = Delta.decode(d.encode())
        assert back.event_ids == d.event_ids == fingerprints([pv["event_id"].encode() for pv in items])
        assert back.events == d.events and back.session_timeout_ms == timeout
    # A delta without ids (written before they were carried, or a product delta) is applied whole.
    bare = pageview_delta({"source_partition": 0, "source_offset": 1,
                           "items": [{k: v for k, v in pv.items() if k != "event_id"} for pv in items]})
    assert Delta.decode(bare.encode()).event_ids == [] and bare.events == []
    st = PartitionState(0)
    st.apply(bare)
    assert st.apply(_delta(items, 2, 0)).event_ids  # nothing was remembered of the bare one


def test_stage1_deltas_carry_the_fingerprints_of_their_pageviews():
    codec = default_codec()
    now = datetime.now(UTC)
    cfg = stage1.Stage1Config(partitions=3, salt_period="day", lateness_ms=48 * 3600_000, session_timeout_ms=T)
    fast = stage1.FastStage1(codec, cfg)
    read_ids = reader(codec, "pageview_batch", {"event_id"})
    body, items = fast.read(codec.encode("beacon_batch", {"items": _batch(random.Random(7), now, 200)}))
    now_ms = int(now.timestamp() * 1000)
    out = fast.process(body, items, 0, 9, {p: SALT for p in fast.periods_needed(items, now_ms)}, now_ms)
    assert out.enriched
    for p, value in out.enriched:
        ids = [pv["event_id"].encode() for pv in read_ids(value)["items"]]
        assert Delta.decode(out.deltas[p]).event_ids == fingerprints(ids)


def test_fingerprints_are_the_same_for_the_same_id_in_any_batch_and_differ_otherwise():
    v7, v4 = uuid7(), str(uuid.uuid4())
    want = [(int(uuid.UUID(i)) >> 64) * 0x9E3779B97F4A7C15 % 2**64 ^ int(uuid.UUID(i)) % 2**64 for i in (v7, v4)]
    assert fingerprints([v7.encode(), v4.encode()]) == want
    assert fingerprints([v7.upper().encode()]) == want[:1]  # the same UUID
    odd = [b"not-a-uuid", b"x" * 36, v7.replace("-", " ").encode(), "\u00e9".encode() * 18]
    alone = [fingerprints([i])[0] for i in odd]
    assert fingerprints(odd + [v7.encode()]) == alone + want[:1]  # batch-mates change nothing
    assert len(set(alone)) == 4
    many = [uuid7().encode() for _ in range(200_000)]
    assert len(set(fingerprints(many))) == len(many)


def test_ids_are_forgotten_with_their_hours():
    seen = SeenEvents()
    hour = int(BASE.timestamp() * 1000)
    rnd = random.Random(8)
    ids = list({rnd.getrandbits(64) for _ in range(3000)})
    times = [hour + i * 3600 for i in range(1000)] + [hour + HOUR_MS + i for i in range(2000)]
    seen.add(by_hour(times), ids)
    assert seen.count == 3000 and seen.repeats(by_hour(times[:5]), ids[:5]) == set(range(5))
    mixed = [ids[5], 1, ids[2500], ids[5]]  # two held (in two hours), one new, one repeated in the list
    assert seen.repeats(by_hour([times[5], hour, times[2500], times[5]]), mixed) == {0, 2, 3}
    assert seen.repeats(by_hour([times[0]]), [ids[2000]]) == set()  # held under its own hour only
    assert seen.nbytes() / seen.count <= 17
    seen.prune(hour + HOUR_MS + 1)
    assert seen.count == 2000 and seen.repeats(by_hour(times[:5]), ids[:5]) == set()
    seen.add(by_hour([hour]), [ids[0]], open_after_ms=hour + HOUR_MS + 1)  # a closed hour: not held
    assert seen.count == 2000


def _product(event_id: str, workspace: str, when: datetime) -> dict:
    from tally.schemas.catalog import CATALOG

    return {"event_id": event_id, "event": "report.created", "feature_area": CATALOG["report.created"].feature_area,
            "tenant_id": "t1", "workspace_id": workspace, "actor_type": "user", "actor_id": "u_1",
            "subject_type": CATALOG["report.created"].subject_type, "subject_id": "r_1", "occurred_at": when,
            "app": "billing", "metadata": {"report_type": "entra_admin_roles", "format": "pdf", "finding_count": 3}}


def test_a_product_event_sent_again_counts_once_also_after_a_rebuild():
    from tally.streams.product import product_delta

    codec = default_codec()
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    again = _product(uuid7(), "ws_1", now)
    sent = [again, _product(uuid7(), "ws_2", now), again, _product(uuid7(), "ws_3", now), again]

    def delta(event: dict, offset: int) -> Delta:
        d, bad = product_delta(codec, codec.encode("product_event", event), "product.events", 0, offset,
                               now_ms, 48 * HOUR_MS)
        assert bad is None
        return d

    st, log, left_out = PartitionState(0), [], 0
    for offset, event in enumerate(sent):
        d = delta(event, offset)
        assert d.event_ids == fingerprints([event["event_id"].encode()])
        applied = st.apply(d)
        left_out += applied is not d
        log.append(pack([applied]))
    assert left_out == 2
    family = [w for k, w in st.windows.items() if k[0] == "product_family_day"]
    assert [(w.count, len(w.visitors)) for w in family] == [(3, 3)]
    rebuilt = fold(0, log)  # the changelog holds the ids: a new owner knows them too
    assert rebuilt.seen_events.count == 3
    assert rebuilt.apply(delta(again, 9)).product == {}
    assert [(w.count, len(w.visitors)) for k, w in rebuilt.windows.items() if k[0] == "product_family_day"] == [(3, 3)]


def test_ids_older_than_the_dedup_window_are_forgotten_newer_ones_are_not():
    """TALLY_DEDUP_WINDOW_SECONDS: ids are held for less than the lateness bound. An event
    whose hour is older than the window is not remembered (and a repeat of it counts again);
    one in the window is, until the window has passed it."""
    from tally.streams.stages import Clock

    from tally.config import Settings

    clock = Clock(Settings.from_env({"TALLY_DEDUP_WINDOW_SECONDS": str(6 * 3600)}))
    now_ms = clock.ms()
    remember_after = now_ms - clock.dedup_ms
    old = [{**pv, "received_at": datetime.fromtimestamp((now_ms - 8 * HOUR_MS) / 1000, UTC)} for pv in _pvs(20, 3)]
    new = [{**pv, "received_at": datetime.fromtimestamp((now_ms - 2 * HOUR_MS) / 1000, UTC)} for pv in _pvs(30, 4)]
    st = PartitionState(0)
    open_after = now_ms - clock.lateness_ms  # both are within the lateness: their windows are open
    st.apply(_delta(old, 0, 0), open_after, remember_after)
    st.apply(_delta(new, 1, 0), open_after, remember_after)
    assert st.seen_events.count == 30  # the old hour's ids were not kept
    assert st.apply(_delta(new, 2, 0), open_after, remember_after).event_ids == []  # a repeat: left out
    assert len(st.apply(_delta(old, 3, 0), open_after, remember_after).event_ids) == 20  # counted again

    st = fold(0, [pack([_delta(old, 0, 0)]), pack([_delta(new, 1, 0)])])  # held for the lateness bound
    assert st.seen_events.count == 50
    st.prune(open_after, forget_ids_before_ms=remember_after)
    assert st.seen_events.count == 30 and st.windows  # the windows stay open, the old ids go
    st.prune(open_after, forget_ids_before_ms=now_ms)  # the window has passed the newer ones too
    assert st.seen_events.count == 0
