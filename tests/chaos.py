"""Shared parts of the fault-injection scenarios (`make chaos`): a seeded fault schedule,
the exact final checks every scenario ends with, and the one-line report it prints.

The final checks are the ones docs/reliability.md promises, run in ClickHouse:
- nothing lost: the acknowledged beacons are exactly the stored ones;
- nothing duplicated: rows FINAL, `count()`, `uniqExact(event_id)` and distinct paths are all
  the acknowledged count, and `beacons.raw` holds each `event_id` once;
- aggregates equal the raw rows: `tally reconcile` finds no drift;
- settled: the worker's and the sink's consumer lag is 0, the collector's spool is empty,
  and no process died.
"""

from __future__ import annotations

import json
import os
import random
import signal
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Collection, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

from tests.conftest import Env, Proc, wait_for
from tests.helpers import BeaconLoad, query_rows, read_beacons


class Faults:
    """Random choices of a scenario (which process, which signal, how long) from one seed,
    printed so that a failing run can be repeated: TALLY_CHAOS_SEED=<seed> make chaos."""

    def __init__(self, name: str, seed: int | None = None) -> None:
        env_seed = os.environ.get("TALLY_CHAOS_SEED")
        self.seed = seed if seed is not None else int(env_seed) if env_seed else random.SystemRandom().randrange(10**6)
        self.rnd = random.Random(self.seed)
        self.log: list[str] = []
        print(f"[chaos] {name}: seed {self.seed}")

    def pause(self, lo: float, hi: float) -> float:
        """Sleep a random while in [lo, hi] seconds; returns it."""
        wait = self.rnd.uniform(lo, hi)
        time.sleep(wait)
        return wait

    def signal(self, proc: Proc, sig: signal.Signals) -> None:
        """Send sig to the process group of proc (SIGKILL and SIGTERM also wait for its exit)."""
        self.log.append(f"{time.strftime('%H:%M:%S')} {sig.name} {proc.name}")
        if sig in (signal.SIGKILL, signal.SIGTERM):
            proc.stop(sig)
        else:
            os.killpg(proc.popen.pid, sig)


def readyz(settings: Any) -> dict[str, Any]:
    url = f"http://{settings.collector_host}:{settings.collector_port}/readyz"
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())


def stored(settings: Any, prefix: str) -> tuple[int, int, int, int]:
    """(rows FINAL, rows, distinct event_ids, distinct paths) of the beacons under prefix."""
    final = query_rows(settings, f"SELECT count() FROM pageviews FINAL WHERE startsWith(path, '{prefix}')")
    raw = query_rows(settings, "SELECT count(), uniqExact(event_id), uniqExact(path) FROM pageviews "
                               f"WHERE startsWith(path, '{prefix}')")
    return final[0][0], *raw[0]


def stored_paths(settings: Any, prefix: str) -> set[str]:
    return {r[0] for r in query_rows(settings, f"SELECT path FROM pageviews WHERE startsWith(path, '{prefix}')")}


def group_lag(settings: Any) -> dict[str, int] | None:
    """Total lag of the worker group and of the sink group (None while the broker cannot say)."""
    from tally.ops.lag import group_report

    from tally.topics import admin, sink_group

    try:
        client = admin(settings)
        return {group: sum(lag.total for lag in group_report(client, group).lag)
                for group in (settings.app_id, sink_group(settings))}
    except Exception:
        return None


def drifting_days(settings: Any) -> list[Any]:
    from tally.sinks.reconcile import reconcile

    today = datetime.now(UTC).date()
    return [d for d in reconcile(settings, today - timedelta(days=1), today + timedelta(days=4)) if d.drift]


def tails(procs: Sequence[Proc], chars: int = 2500) -> str:
    return "\n".join(f"--- {p.name}\n{p.output()[-chars:]}" for p in procs)


def assert_stored_exactly_once(env: Env, load: BeaconLoad, prefix: str, procs: Sequence[Proc],
                               timeout: float = 240, raw_repeats: bool = False, unmerged_rows: bool = False,
                               lost: Collection[str] = (), in_flight: Collection[str] = ()) -> dict[str, int]:
    """Every check of the module docstring; returns the scenario's counts for report().

    raw_repeats: a collector was killed during its replay, so a batch may have reached
    Kafka twice (docs/reliability.md's one exception): `beacons.raw` and unmerged rows may
    hold an event_id twice; rows FINAL and distinct event_ids must still equal the
    acknowledged beacons, and the aggregates count each once (reconcile).
    unmerged_rows: a worker was SIGKILLed, or lost its partitions before its commit while the
    broker was away, so `pageviews` may hold second copies of rows until a merge
    (docs/reliability.md); `beacons.raw` still holds each event_id once, and rows FINAL
    and distinct event_ids must equal the acknowledged beacons.
    lost: acknowledged beacons (paths) a counted fault destroyed (a corrupt spool record);
    the stored ones must be exactly the others.
    in_flight: beacons not acknowledged that may be stored all the same (a collector killed
    after their spool write, before its answer); each at most once."""
    s = env.settings
    expected = load.acked - set(lost)
    acked = len(expected)
    try:
        # (paths too: beacons stored though unanswered (in_flight) must not stand in for them)
        wait_for(lambda: stored(s, prefix)[0] >= acked and expected <= stored_paths(s, prefix), timeout,
                 f"{acked} acknowledged beacons in ClickHouse", interval=1)
    except AssertionError:
        raise AssertionError(f"{acked} acknowledged, stored (FINAL, rows, ids, paths): {stored(s, prefix)}; "
                             f"lag {group_lag(s)}\n{tails(procs)}") from None
    final, rows, ids, paths = stored(s, prefix)
    got = stored_paths(s, prefix)
    # ClickHouse folds repeated event_ids when it merges; the raw topic shows any that were sent.
    raw = [b for b in read_beacons(s, acked) if b["path"].startswith(prefix)]
    repeated = Counter(str(b["event_id"]) for b in raw)
    twice = {i: n for i, n in repeated.items() if n > 1}
    seen = (f"{acked} acknowledged; stored (FINAL, rows, ids, paths) {(final, rows, ids, paths)}; "
            f"{len(twice)} event_ids more than once in {s.topic('beacons.raw')}, e.g. {list(twice.items())[:3]}; "
            f"{len(got - expected)} stored not acknowledged, e.g. {sorted(got - expected)[:3]}; "
            f"{len(expected - got)} acknowledged not stored, e.g. {sorted(expected - got)[:3]}")
    n = len(got)  # the acknowledged ones and any in-flight ones that were stored
    if raw_repeats:
        assert (final, ids, paths) == (n, n, n) and rows >= n, seen
    elif unmerged_rows:
        assert (final, ids, paths) == (n, n, n) and rows >= n, seen
        assert not twice, seen
    else:
        assert (final, rows, ids, paths) == (n, n, n, n), f"{seen}\n{tails(procs)}"
        assert not twice, seen
    assert expected <= got <= expected | set(in_flight), seen  # the acknowledged ones, not others

    # The worker emits window totals every TALLY_TOTALS_FLUSH_SECONDS; the sink follows.
    try:
        wait_for(lambda: not drifting_days(s), 120, "aggregates equal to the raw rows")
    except AssertionError:
        raise AssertionError(f"drift {drifting_days(s)}; lag {group_lag(s)}\n{tails(procs, 6000)}") from None
    wait_for(lambda: (lag := group_lag(s)) is not None and not any(lag.values()), 120,
             "worker and sink consumer lag 0")
    collectors = [p for p in procs if p.name.startswith("collector") and p.alive()]
    for _ in collectors:
        wait_for(lambda: readyz(s).get("spool_batches") == 0, 120, "the collector's spool empty")
    for p in procs:
        assert p.alive(), f"{p.name} died:\n{p.output()[-3000:]}"
    counts = {"acknowledged": len(load.acked), "not_acknowledged": len(load.failed),
              "lost": acked - len(got & expected), "duplicated": rows - ids, "drift": 0}
    if in_flight:
        counts["stored_not_acknowledged"] = len(got - expected)
    if lost:
        counts["lost_to_counted_fault"] = len(load.acked & set(lost))
    if raw_repeats:
        counts["raw_repeats"] = sum(n - 1 for n in twice.values())
    if raw_repeats or unmerged_rows:
        counts["duplicated_final"] = final - ids  # what a reader sees: always 0
    return counts


def report(scenario: str, faults: Faults | None, **figures: Any) -> None:
    """One line per scenario: `[chaos] {json}`, the figures docs/reliability.md tabulates."""
    line = {"scenario": scenario, **({"seed": faults.seed, "faults": len(faults.log)} if faults else {}), **figures}
    print(f"[chaos] {json.dumps(line)}")
