"""Stream worker benchmark: events/s of one `tally worker` process for the full path, compared
with a raw aiokafka consumer loop over the same topic in the same run; plus window-state memory.

    .venv/bin/python bench/stream.py [--events 300000] [--bootstrap host:port]

Without --bootstrap it starts its own single-node Kafka broker (infra/kafka).

Traffic is realistic and repetitive: Zipf-distributed sites (50), paths (2,000) and user
agents (2,000 real browser UAs from tests/data plus 5% bots), in collector-sized batches of
200 beacons, over 6 partitions. Two workloads (--traffic, both by default; see workload()):
"visits", visits of a few pageviews (mean 3) by one visitor each, their pageviews ~50 s
apart; and "independent", where site, UA and IP pseudonym (Zipf over 200,000) are drawn per
event, so nearly every event is a new visitor: the worst case for sessions.

- worker_events_per_s: one worker process (decode, bot filter, salt + hash, enrich, encode,
  route to visitor partitions, window state with changelog, aggregates) from the moment the
  input is produced until the worker has committed the end of beacons.raw AND of
  pageviews.enriched (Faust commits every second, so this slightly understates the rate).
  Target >= 20,000 events/s.
- worker_events_per_cpu_s: the same, per CPU second the worker process used (user + system):
  the figure that does not depend on what else the shared machine runs.
- raw_events_per_s: a bare aiokafka consumer over the same records that decodes each
  record's Avro batch and counts its beacons (consuming and decoding, and nothing else of
  the worker's path). ratio = worker / raw.
- sessions: per workload, the same records through a worker with sessions off
  (TALLY_SESSION_TIMEOUT_SECONDS=0), on fresh topics, in the same run, before the worker with
  sessions on (the default, 30 minutes): sessions_<traffic>.ratio = events/s on / events/s
  off, and cpu_ratio the same per CPU second (the figure less moved by other load).
  Target ratio >= 0.8.
- state_bytes_per_visitor_window: bytes of VisitorSet per (visitor, window) for 1M visitors in
  one window, next to the same for a Python set of ints. Target <= 64.
The last line is one JSON object. BENCH_PYSPY=<file> profiles the worker with py-spy (if
installed) into collapsed stacks.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
from confluent_kafka import Producer, TopicPartition  # noqa: E402
from tally.schemas.codec import default_codec  # noqa: E402

from tally.config import Settings  # noqa: E402
from tally.kafka import producer_config  # noqa: E402
from tally.topics import admin, ensure_topics  # noqa: E402

BATCH = 200
PARTITIONS = 6


def zipf_choice(rnd: np.random.Generator, n_items: int, size: int, a: float = 1.2) -> np.ndarray:
    ranks = np.arange(1, n_items + 1, dtype=np.float64)
    p = ranks ** -a
    return rnd.choice(n_items, size=size, p=p / p.sum())


GAP = 25_000  # input events between two pageviews of one visit (more than one totals flush holds)


def workload(n: int, traffic: str = "visits") -> list[bytes]:
    """n beacons in batches of BATCH, received over the last 600 s, in time order.

    traffic "visits": visits of a few pageviews (geometric, mean 3: a third are bounces),
    each by its own visitor (a fixed site, IP pseudonym and user agent), the pageviews of a
    visit GAP events (about 50 s) apart, so that each lands in another totals flush as it
    would at a live site's pace: every pageview changes its visit and its session row.
    traffic "independent": site, path, user agent and IP pseudonym drawn independently per
    event, so the visitor id (a hash of site, IP and UA) is new for nearly every event:
    the worst case for sessions (three quarters of the events start a visit)."""
    rnd = np.random.default_rng(5)
    browsers = (REPO / "tests/data/ua_browsers.txt").read_text().splitlines()
    bots = (REPO / "tests/data/ua_bots.txt").read_text().splitlines()
    pool = random.Random(5).sample(browsers, 1900) + random.Random(5).sample(bots, 100)
    random.Random(6).shuffle(pool)
    sites = zipf_choice(rnd, 50, n)
    paths = zipf_choice(rnd, 2000, n)
    uas = zipf_choice(rnd, len(pool), n)
    visitors = zipf_choice(rnd, 200_000, n, a=1.05)
    if traffic == "visits":
        # Visit v's events sit at positions start_v + j * GAP; site, UA and IP are the visit's.
        slots: list[tuple[int, int]] = []  # (position, visit)
        v = 0
        while len(slots) < n:
            start, k = int(rnd.integers(0, n)), int(rnd.geometric(1 / 3))
            slots += [(start + j * GAP, v) for j in range(k)]
            v += 1
        slots.sort()
        order = [visit for _, visit in slots[:n]]
        sites, uas = sites[order], uas[order]
        visitors = np.array(order) + 1_000_000  # IP pseudonyms: one per visit
    now = datetime.now(UTC)
    codec = default_codec()
    records = []
    for start in range(0, n, BATCH):
        items = []
        for i in range(start, min(n, start + BATCH)):
            items.append({"event_id": str(uuid.uuid4()),
                          "received_at": now - (timedelta(milliseconds=600_000 * (n - i) // n) if traffic == "visits"
                                                else timedelta(seconds=int(i % 600))),
                          "site": f"site{sites[i]}.example", "path": f"/docs/{paths[i]}?ref=x",
                          "referrer": "https://www.google.com/" if i % 3 == 0 else None, "event": "pageview",
                          "props": {}, "user_agent": pool[uas[i]], "ip_pseudonym": f"{visitors[i]:016x}",
                          "datacenter": False})
        records.append(codec.encode("beacon_batch", {"items": items}))
    return records


def produce(settings: Settings, records: list[bytes]) -> None:
    p = Producer(producer_config(settings))
    for i, r in enumerate(records):
        while True:
            try:
                p.produce(settings.topic("beacons.raw"), value=r, partition=i % PARTITIONS)
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(60) == 0


def committed_at_end(settings: Settings, group: str, topics: list[str]) -> bool:
    client = admin(settings)
    from confluent_kafka import Consumer, ConsumerGroupTopicPartitions

    fut = client.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group)])[group]
    try:
        committed = {(tp.topic, tp.partition): tp.offset for tp in fut.result(timeout=10).topic_partitions}
    except Exception:
        return False
    c = Consumer({"bootstrap.servers": settings.bootstrap, "group.id": "bench-probe"})
    try:
        for t in topics:
            name = settings.topic(t)
            for p in range(PARTITIONS):
                lo, hi = c.get_watermark_offsets(TopicPartition(name, p), timeout=10)
                if hi > 0 and committed.get((name, p), -1) < hi:
                    return False
        return True
    finally:
        c.close()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux /proc): the worker's own work, whatever
    else runs on the machine."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_worker(settings: Settings, env: dict[str, str], records: list[bytes], log: Path) -> tuple[float, float]:
    with open(log, "wb") as fh:
        cmd = [sys.executable, "-m", "tally.ops", "worker"]
        if os.environ.get("BENCH_PYSPY"):  # profile the worker: collapsed stacks to this file
            cmd = [str(Path(sys.executable).parent / "py-spy"), "record", "--format", "raw", "-o",
                   os.environ["BENCH_PYSPY"], "--", *cmd]
        proc = subprocess.Popen(cmd, cwd=REPO, env=env,
                                stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        from tally.ops.stack import worker_ready

        deadline = time.monotonic() + 120
        while not worker_ready(settings):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"worker did not start; see {log}")
            time.sleep(0.2)
        time.sleep(2)
        # Under py-spy the worker is py-spy's child: count the worker's CPU, not py-spy's
        # (counting py-spy's once made a profiled run look 2.5x cheaper per event).
        worker_pid = proc.pid
        if os.environ.get("BENCH_PYSPY"):
            children = Path(f"/proc/{proc.pid}/task/{proc.pid}/children").read_text().split()
            worker_pid = int(children[0]) if children else proc.pid
        cpu0 = cpu_seconds(worker_pid)
        t0 = time.monotonic()
        produce(settings, records)
        while not committed_at_end(settings, settings.app_id, ["beacons.raw", "pageviews.enriched"]):
            if proc.poll() is not None:
                raise RuntimeError(f"worker died; see {log}")
            time.sleep(0.25)
        return time.monotonic() - t0, cpu_seconds(worker_pid) - cpu0
    finally:
        os.killpg(proc.pid, signal.SIGINT if os.environ.get("BENCH_PYSPY") else signal.SIGTERM)
        proc.wait(60)


async def bench_raw(settings: Settings) -> tuple[float, int]:
    """Seconds and beacons of a bare consumer that decodes every record it counts."""
    from aiokafka import AIOKafkaConsumer

    codec = default_codec()
    c = AIOKafkaConsumer(settings.topic("beacons.raw"), bootstrap_servers=settings.bootstrap,
                         auto_offset_reset="earliest", group_id=f"bench-raw-{uuid.uuid4().hex[:6]}",
                         enable_auto_commit=False)
    await c.start()
    try:
        t0, n = time.monotonic(), 0
        idle = 0
        while idle < 3:
            got = await c.getmany(timeout_ms=500, max_records=10000)
            if not got:
                idle += 1
                continue
            idle = 0
            for msgs in got.values():
                for msg in msgs:
                    n += len(codec.decode("beacon_batch", msg.value)["items"])
        return time.monotonic() - t0 - 1.5, n  # minus the idle polls that detect the end
    finally:
        await c.stop()


def state_memory() -> dict[str, float]:
    import tracemalloc

    from tally.streams.windows import VisitorSet

    n = 1_000_000
    rnd = np.random.default_rng(1)
    ids = rnd.integers(0, 2**63, size=n, dtype=np.uint64)
    tracemalloc.start()
    vs = VisitorSet()
    for i in range(0, n, 50):  # batches of 50, as from the stream
        vs.add_many(ids[i:i + 50])
    ours = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    tracemalloc.start()
    s: set[int] = set()
    for i in range(0, n, 50):
        s.update(ids[i:i + 50].tolist())
    theirs = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(vs) == len(s)
    return {"state_bytes_per_visitor_window": ours / n, "python_set_bytes_per_visitor": theirs / n}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--events", type=int, default=300_000)
    ap.add_argument("--bootstrap", default="", help="use this Kafka instead of starting one")
    ap.add_argument("--traffic", nargs="+", choices=["visits", "independent"], default=["visits", "independent"],
                    help="workloads to run (see workload()); the first gives worker_events_per_s")
    args = ap.parse_args()
    from tests.conftest import bench_kafka

    with tempfile.TemporaryDirectory(prefix="tally-bench-") as tmp, \
            bench_kafka(Path(tmp), args.bootstrap, heap_mb=768) as bootstrap:
        results: dict[str, dict[str, float]] = {}
        for traffic in args.traffic:
            print(f"encoding {args.events:,} beacons ({traffic})...", file=sys.stderr)
            records = workload(args.events, traffic)
            rates = {}
            for label, timeout in (("sessions off", "0"), ("sessions on", "1800")):
                tag = uuid.uuid4().hex[:6]
                env_vars = {"TALLY_KAFKA_BOOTSTRAP": bootstrap, "TALLY_TOPIC_PREFIX": f"bench{tag}.",
                            "TALLY_TOPIC_PARTITIONS": str(PARTITIONS), "TALLY_STATE_DIR": str(Path(tmp) / tag),
                            "TALLY_APP_ID": f"bench-stream-{tag}", "TALLY_LOG_LEVEL": "warning",
                            "TALLY_SESSION_TIMEOUT_SECONDS": timeout}
                settings = Settings.from_env(env_vars)
                ensure_topics(settings)
                env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")} | env_vars
                secs, cpu = bench_worker(settings, env, records, Path(tmp) / f"worker-{tag}.log")
                rates[label] = (args.events / secs, args.events / cpu)
                print(f"worker, {traffic}, {label}: {args.events:,} events in {secs:.2f}s = "
                      f"{rates[label][0]:,.0f} events/s ({cpu:.1f} CPU s: {rates[label][1]:,.0f} events per CPU "
                      f"second; load {os.getloadavg()[0]:.1f})", file=sys.stderr)
            (on, on_cpu), (off, off_cpu) = rates["sessions on"], rates["sessions off"]
            results[traffic] = {"events_per_s": on, "events_per_cpu_s": on_cpu, "off_events_per_s": off,
                                "off_events_per_cpu_s": off_cpu, "ratio": on / off, "cpu_ratio": on_cpu / off_cpu}
            print(f"{traffic}: sessions on / off: {on / off:.3f} (per CPU second {on_cpu / off_cpu:.3f})",
                  file=sys.stderr)
        main_result = results[args.traffic[0]]
        worker_rate, cpu_rate = main_result["events_per_s"], main_result["events_per_cpu_s"]
        raw_secs, raw_events = asyncio.run(bench_raw(settings))
        raw_rate = raw_events / raw_secs
        print(f"raw aiokafka + Avro decode: {raw_events:,} events in {raw_secs:.2f}s = {raw_rate:,.0f} events/s",
              file=sys.stderr)
    mem = state_memory()
    print(f"state: {mem['state_bytes_per_visitor_window']:.1f} bytes/visitor/window "
          f"(Python set of ints: {mem['python_set_bytes_per_visitor']:.1f})", file=sys.stderr)
    sessions = {f"sessions_{t}": {k: round(v, 3 if "ratio" in k else None) for k, v in r.items()}
                for t, r in results.items()}
    print(json.dumps({"events": args.events, "batch": BATCH, "worker_events_per_s": round(worker_rate),
                      "worker_events_per_cpu_s": round(cpu_rate), **sessions,
                      "raw_events_per_s": round(raw_rate), "ratio": round(worker_rate / raw_rate, 4),
                      **{k: round(v, 1) for k, v in mem.items()}}))


if __name__ == "__main__":
    main()
