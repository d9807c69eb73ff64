"""The stream worker's stall watchdog, judged with a scripted clock (no Kafka needed)."""

from __future__ import annotations

from tally.streams.watchdog import Watchdog

RAW, ENRICHED = "t.beacons.raw", "t.pageviews.enriched"
STAGES = {RAW: "stage1-beacons", ENRICHED: "stage2-windows"}


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make(stall: float = 60.0) -> tuple[Watchdog, Clock]:
    clock = Clock()
    return Watchdog(stall, STAGES, clock=clock), clock


def test_records_left_and_no_progress_for_the_stall_time_is_a_stall_naming_stage_and_wait():
    wd, clock = make()
    wd.assigned([(ENRICHED, 2)])
    wd.done(ENRICHED, 2, 9)
    with wd.waiting("web state of partition 2: changelog rebuild"):
        clock.now += 59
        assert wd.check({(ENRICHED, 2): 50}, {}) is None  # not yet
        clock.now += 2
        stall = wd.check({(ENRICHED, 2): 50}, {})
    assert stall is not None
    assert (stall.stage, stall.topic, stall.partition, stall.lag) == ("stage2-windows", ENRICHED, 2, 40)
    assert "changelog rebuild" in stall.describe() and "stage2-windows" in stall.describe()


def test_progress_resets_the_clock():
    wd, clock = make()
    wd.assigned([(RAW, 0)])
    for offset in range(10):
        clock.now += 30
        wd.done(RAW, 0, offset)
        assert wd.check({(RAW, 0): 100}, {}) is None


def test_a_partition_with_nothing_left_never_stalls():
    wd, clock = make()
    wd.assigned([(RAW, 0), (RAW, 1)])
    wd.done(RAW, 0, 99)
    clock.now += 3600
    # partition 0 fully processed; partition 1 never processed but its commit is at the end
    assert wd.check({(RAW, 0): 100, (RAW, 1): 7}, {(RAW, 1): 7}) is None


def test_an_unprocessed_partition_counts_from_its_committed_offset():
    wd, clock = make()
    wd.assigned([(RAW, 1)])
    clock.now += 61
    stall = wd.check({(RAW, 1): 10}, {(RAW, 1): 4})
    assert stall is not None and stall.lag == 6
    assert "no record delivered by the consumer" in stall.describe()


def test_a_wait_that_keeps_moving_is_not_a_stall_but_a_silent_one_is():
    wd, clock = make()
    wd.assigned([(ENRICHED, 0)])
    with wd.waiting("web state of partition 0: changelog rebuild") as touch:
        for _ in range(10):  # a long rebuild that reports progress
            clock.now += 30
            touch()
            assert wd.check({(ENRICHED, 0): 5}, {}) is None
        clock.now += 61  # then it goes silent
        assert wd.check({(ENRICHED, 0): 5}, {}) is not None


def test_revoked_partitions_are_forgotten_and_a_new_assignment_gets_the_full_grace():
    wd, clock = make()
    wd.assigned([(RAW, 0)])
    clock.now += 59
    wd.revoked([(RAW, 0)])
    wd.assigned([(RAW, 0)])
    clock.now += 30
    assert wd.check({(RAW, 0): 10}, {}) is None
    clock.now += 31
    assert wd.check({(RAW, 0): 10}, {}) is not None


def test_end_offsets_read_before_a_revocation_are_not_judged_and_leave_nothing_behind():
    # The health check reads the held partitions' end offsets, then the rebalance hook revokes
    # one before check() runs (this crashed the worker with a KeyError).
    wd, clock = make()
    wd.assigned([(RAW, 0), (RAW, 1)])
    wd.done(RAW, 1, 6)
    wd.revoked([(RAW, 1)])
    clock.now += 61
    assert wd.check({(RAW, 0): 0, (RAW, 1): 6}, {(RAW, 1): 6}) is None
    assert wd.check({(RAW, 0): 0, (RAW, 1): 9}, {(RAW, 1): 6}) is None  # records left, but not held
    assert (RAW, 1) not in wd.view and (RAW, 1) not in wd.commit_view
    clock.now += 100
    wd.assigned([(RAW, 1)])  # held again later: the full grace period, not the stale check's clock
    clock.now += 59
    assert wd.check({(RAW, 0): 0, (RAW, 1): 9}, {(RAW, 1): 6}) is None
    clock.now += 2
    assert wd.check({(RAW, 0): 0, (RAW, 1): 9}, {(RAW, 1): 6}) is not None


def test_the_worst_stall_is_reported():
    wd, clock = make()
    wd.assigned([(RAW, 0)])
    clock.now += 30
    wd.assigned([(ENRICHED, 3)])
    clock.now += 70
    stall = wd.check({(RAW, 0): 10, (ENRICHED, 3): 10}, {})
    assert stall is not None and (stall.topic, stall.seconds) == (RAW, 100)


def test_zero_switches_it_off():
    wd, clock = make(stall=0)
    wd.assigned([(RAW, 0)])
    clock.now += 10**6
    assert wd.check({(RAW, 0): 10}, {}) is None


def test_with_the_broker_unreachable_the_health_report_says_so_instead_of_the_last_ok(tmp_path):
    """`tally status` reads this report: a stale "ok" would hide the outage."""
    import asyncio
    from types import SimpleNamespace

    from tally.streams import liveness

    from tally import health
    from tally.config import Settings

    settings = Settings.from_env({"TALLY_STATE_DIR": str(tmp_path)})
    health.write(settings, "worker", {"state": "ok", "held": 1})

    class Unreachable:
        def assignment(self):
            return [SimpleNamespace(topic=RAW, partition=0)]

        async def highwaters(self, *_tps):
            raise ConnectionError("no broker at 127.0.0.1:1")

    watchdog, _clock = make()
    asyncio.run(liveness.check(settings, SimpleNamespace(consumer=Unreachable()), watchdog, {}, {}))
    (report,) = health.read(settings, "worker")
    assert report["state"] == "no_broker" and "no broker at 127.0.0.1:1" in report["detail"]


def test_records_done_and_not_committed_show_how_long_the_commit_has_not_moved():
    dog, clock = make()
    tp = (RAW, 0)
    dog.assigned([tp])
    dog.check({tp: 10}, {tp: None})
    assert dog.commit_view[tp] == (0, 0.0)  # nothing processed yet
    for offset in range(5):
        dog.done(RAW, 0, offset)
    clock.now += 3
    dog.check({tp: 10}, {tp: None})
    assert dog.commit_view[tp] == (5, 3.0)  # five done, never committed
    clock.now += 2
    dog.check({tp: 10}, {tp: 2})  # Faust's committed offset: the last record committed
    assert dog.commit_view[tp] == (2, 0.0)  # the commit moved
    clock.now += 7
    dog.check({tp: 10}, {tp: 2})
    assert dog.commit_view[tp] == (2, 7.0)
    dog.check({tp: 10}, {tp: 4})
    assert dog.commit_view[tp] == (0, 0.0)  # all committed: nothing waits, whatever the time
    clock.now += 100
    dog.check({tp: 10}, {tp: 4})
    assert dog.commit_view[tp] == (0, 0.0)
