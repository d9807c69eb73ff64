"""What sessions cost the stream worker, in CPU, without Kafka: bench/stream.py's workload
records through the worker's own stage objects in one process, sessions off against on.

    .venv/bin/python bench/stream_offline.py [--events 150000] [--rounds 3] [--traffic visits independent]

Each run builds a fresh worker path: BeaconStage (stage 1) -> WindowStage (stage 2, the
window state and its changelog record) -> Totals.flush (window totals and session rows)
every --flush-events input events, as the totals timer would at a live pace (the default,
20,000 events, is under bench/stream.py's GAP, so each pageview of a visit lands in another
flush). Every output record goes through librdkafka's produce() into a producer with no
broker (its queue is purged after each flush): the produce cost is counted, delivery is not.
Faust's per-record machinery and the fetch are left out: they cost the same with sessions on
and off, so the on/off ratio here is a bound the full worker's ratio sits above.

CPU is time.process_time() of this process, so other load on a shared machine moves it
little. Runs alternate off/on `--rounds` times after one untimed warm-up (the first sight of
each user agent is a fixed cost). The garbage collector is set as the worker sets it.
Reported per workload: us per event off and on (the least over rounds: other load only adds), the on/off ratio
of the per-CPU-second rates, and the records the flushes produced. BENCH_PROFILE=<file>
writes a cProfile of one sessions-on run per workload (<file>.<traffic>). The last line is
one JSON object.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import gc
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Producer  # noqa: E402
from tally.schemas.codec import default_codec  # noqa: E402
from tally.streams.metrics import WorkerCounts  # noqa: E402
from tally.streams.outputs import Out, Totals  # noqa: E402
from tally.streams.stages import BeaconStage, Clock, In, WindowStage  # noqa: E402
from tally.streams.state import StateStore, state_topic  # noqa: E402

from bench.stream import BATCH, PARTITIONS, workload  # noqa: E402
from tally.config import Settings  # noqa: E402

SALT = bytes(range(32))


class FixedSalts:
    """The salt cache's interface with one salt for every period (no Kafka, no keeper)."""

    async def get(self, period: str) -> bytes:
        return SALT


def sink() -> Producer:
    """A producer that takes records into its queue and never reaches a broker (nothing
    listens on port 9): produce() costs what it costs in the worker, delivery nothing."""
    return Producer({"bootstrap.servers": "127.0.0.1:9", "queue.buffering.max.messages": 10_000_000,
                     "queue.buffering.max.kbytes": 2_000_000, "linger.ms": 5, "batch.num.messages": 10000,
                     "log_level": 0})


async def run_once(records: list[bytes], timeout_s: int, flush_records: int,
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    """One fresh worker path over all records; CPU seconds and what it produced. env: more
    TALLY_* settings (TALLY_SESSION_FLUSH_SECONDS, say)."""
    settings = Settings.from_env({**(env or {}), "TALLY_KAFKA_BOOTSTRAP": "127.0.0.1:9", "TALLY_TOPIC_PARTITIONS": str(PARTITIONS),
                                  "TALLY_SESSION_TIMEOUT_SECONDS": str(timeout_s), "TALLY_LOG_LEVEL": "warning"})
    codec, clock, counts = default_codec(settings), Clock(settings), WorkerCounts()
    store = StateStore("web", state_topic(settings, "web"), lambda topic, p: [], clock.open_after_ms,
                       clock.remember_after_ms)
    stage1 = BeaconStage(settings, codec, clock, FixedSalts(), counts)  # type: ignore[arg-type]
    stage2 = WindowStage(settings, codec, clock, store, counts)
    totals = Totals(settings, codec, {"web": store}, clock.open_after_ms, clock.remember_after_ms)
    producer = totals._producer = sink()
    session_every = max(1, round(settings.session_flush_seconds / settings.totals_flush_seconds))
    for p in range(PARTITIONS):  # the rebuild (an empty changelog) is not what is measured
        await store.get(p)
    stage_records = totals_records = 0

    def emit(outs: list[Out]) -> None:
        for o in outs:
            where = {} if o.partition is None else {"partition": o.partition}
            producer.produce(o.topic, o.value, o.key, headers=o.headers, **where)

    phases = dict.fromkeys(("stage1", "stage2", "flush"), 0.0)  # CPU seconds of each part of the path
    clock_ = time.process_time

    flushes = 0

    async def flush(last: bool = False) -> None:
        nonlocal totals_records, flushes
        t = clock_()
        flushes += 1
        # The session rows and windows every TALLY_SESSION_FLUSH_SECONDS, counted in totals
        # flushes (the worker's timer), and at the end: every change is paid for once.
        totals_records += await totals.flush(sessions=last or flushes % session_every == 0)
        producer.purge(in_flight=False)
        producer.poll(0)
        phases["flush"] += clock_() - t

    gc.collect()
    cpu0 = clock_()
    for i, value in enumerate(records):
        t = clock_()
        outs = await stage1.handle(In(stage1.topic, i % PARTITIONS, i // PARTITIONS, value))
        emit(outs)
        t1 = clock_()
        phases["stage1"] += t1 - t
        stage_records += len(outs)
        for o in outs:
            if o.topic == stage2.topic:
                emit(got := await stage2.handle(In(o.topic, o.partition or 0, i, o.value, o.headers)))
                stage_records += len(got)
        phases["stage2"] += clock_() - t1
        if (i + 1) % flush_records == 0:
            await flush()
    await flush(last=True)
    cpu = clock_() - cpu0
    events = counts.accepted[stage1.name]
    return {"cpu_s": cpu, "events": events, "stage_records": stage_records, "totals_records": totals_records,
            **{f"{k}_us": 1e6 * v / events for k, v in phases.items()}}


def measure(records: list[bytes], rounds: int, flush_records: int, profile: str | None,
            env: dict[str, str]) -> dict[str, Any]:
    asyncio.run(run_once(records, 0, flush_records, env))  # warm-up: user agents, caches, imports
    runs: dict[int, list[dict[str, Any]]] = {0: [], 1800: []}
    for r in range(rounds):
        for timeout in (0, 1800) if r % 2 == 0 else (1800, 0):
            res = asyncio.run(run_once(records, timeout, flush_records, env))
            runs[timeout].append(res)
            print(f"  sessions {'on ' if timeout else 'off'}: {1e6 * res['cpu_s'] / res['events']:.1f} us/event "
                  f"(stage 1 {res['stage1_us']:.1f}, stage 2 {res['stage2_us']:.1f}, flush {res['flush_us']:.1f}; "
                  f"{res['events']:,} events, {res['totals_records']:,} totals records)", file=sys.stderr)
    if profile:
        prof = cProfile.Profile()
        prof.enable()
        asyncio.run(run_once(records, 1800, flush_records, env))
        prof.disable()
        prof.dump_stats(profile)
    # The least CPU of the rounds: contention on a shared machine only ever adds to it.
    off = min(1e6 * r["cpu_s"] / r["events"] for r in runs[0])
    on = min(1e6 * r["cpu_s"] / r["events"] for r in runs[1800])
    parts = {f"{k}_{label}": round(min(r[k] for r in runs[t]), 2)
             for k in ("stage1_us", "stage2_us", "flush_us") for t, label in ((0, "off"), (1800, "on"))}
    return {**parts, "us_per_event_off": round(off, 2), "us_per_event_on": round(on, 2), "cpu_ratio": round(off / on, 3),
            "pairs": [round(a["cpu_s"] / b["cpu_s"], 3) for a, b in zip(runs[0], runs[1800], strict=True)],
            "events": runs[0][0]["events"], "totals_records_off": runs[0][0]["totals_records"],
            "totals_records_on": runs[1800][0]["totals_records"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=150_000)
    ap.add_argument("--rounds", type=int, default=3, help="off/on pairs per workload (alternating order)")
    ap.add_argument("--flush-events", type=int, default=20_000, help="input events between two totals flushes")
    ap.add_argument("--traffic", nargs="+", choices=["visits", "independent"], default=["visits", "independent"])
    ap.add_argument("--env", nargs="*", default=[], metavar="TALLY_X=V",
                    help="settings for the worker path, e.g. TALLY_SESSION_FLUSH_SECONDS=2 (every totals flush)")
    args = ap.parse_args()
    env = dict(kv.split("=", 1) for kv in args.env)
    gc.freeze()  # as the worker does (streams/app.py run())
    gc.set_threshold(7000, 10, 10)
    out: dict[str, Any] = {"events": args.events, "flush_events": args.flush_events, "rounds": args.rounds, "env": env}
    for traffic in args.traffic:
        print(f"encoding {args.events:,} beacons ({traffic})...", file=sys.stderr)
        records = workload(args.events, traffic)
        profile = os.environ.get("BENCH_PROFILE")
        res = out[f"sessions_{traffic}"] = measure(records, args.rounds, max(1, args.flush_events // BATCH),
                                                   f"{profile}.{traffic}" if profile else None, env)
        print(f"{traffic}: {res['us_per_event_off']} us/event off, {res['us_per_event_on']} on: "
              f"ratio {res['cpu_ratio']}", file=sys.stderr)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
