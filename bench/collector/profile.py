"""Where the collector's time goes under load: py-spy on one collector process under wrk.

    .venv/bin/python bench/collector/profile.py [--clients many|one] [--seconds 20] [--out DIR]
        [--connections 64] [--rate R]

Starts its own broker and one collector (default settings, 127.0.0.1 as trusted proxy,
as bench/collector/run.py), warms both up under the same wrk load (beacons.lua), then
samples the collector's event-loop thread with py-spy (`--gil`: only while it holds
the GIL, i.e. Python work) while wrk keeps loading it. Prints the functions with the
largest share of samples, inclusive (the function and what it calls) and self, and
writes py-spy's raw collapsed stacks and a flame graph to --out. Pinned as run.py:
the collector on CPU 0, wrk and the broker on the others. --rate R holds R requests/s
(run.py's paced phase, with --connections 1024 as there) instead of a closed loop: the
per-request cost differs between the two.
"""

from __future__ import annotations

import argparse
import collections
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from run import SCRIPT, start, stop, wait_http, wrk  # noqa: E402

from tally.config import Settings  # noqa: E402
from tally.topics import ensure_topics  # noqa: E402

FRAME = re.compile(r"^(?P<func>[^ ]+) \((?P<file>[^:]+)(?::\d+)?\)$")


def shares(raw: Path) -> tuple[collections.Counter, collections.Counter, int]:
    """(inclusive, self) sample counts per function, and the total, from py-spy's raw output."""
    inclusive: collections.Counter = collections.Counter()
    own: collections.Counter = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count_s = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_s)
        total += count
        names = []
        for frame in stack.split(";"):
            m = FRAME.match(frame.strip())
            if m:
                names.append(f"{m['func']} ({Path(m['file']).name})")
        for name in set(names):
            inclusive[name] += count
        if names:
            own[names[-1]] += count
    return inclusive, own, total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", choices=("many", "one"), default="many")
    ap.add_argument("--seconds", type=int, default=20, help="seconds of sampling")
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--connections", type=int, default=64)
    ap.add_argument("--rate", type=float, default=0, help="requests/s to hold (0: closed loop)")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "tally-collector-profile")
    args = ap.parse_args()
    if not (Path(sys.executable).parent / "py-spy").exists():
        sys.exit("py-spy is not installed in this environment: .venv/bin/pip install -e '.[profile]'")
    args.out.mkdir(parents=True, exist_ok=True)
    every_cpu = os.sched_getaffinity(0)
    server_cpus = {min(every_cpu)} if len(every_cpu) > 1 else None
    if server_cpus:
        os.sched_setaffinity(0, every_cpu - server_cpus)
    from tests.conftest import bench_kafka, free_port

    with tempfile.TemporaryDirectory(prefix="tally-profile-collector-") as tmp_s, \
            bench_kafka(Path(tmp_s), heap_mb=512) as bootstrap:
        tmp = Path(tmp_s)
        env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
        port = free_port()
        env.update({"TALLY_KAFKA_BOOTSTRAP": bootstrap, "TALLY_STATE_DIR": str(tmp / "state"),
                    "TALLY_TOPIC_PREFIX": f"prof{uuid.uuid4().hex[:6]}.", "TALLY_TOPIC_PARTITIONS": "4",
                    "TALLY_ALLOWED_SITES": "example.com", "TALLY_TRUSTED_PROXIES": "127.0.0.1",
                    "TALLY_LOG_LEVEL": "warning", "TALLY_COLLECTOR_PORT": str(port)})
        if args.clients == "one":
            env["TALLY_RATE_LIMIT_PER_SECOND"] = "0"
        ensure_topics(Settings.from_env(env))
        collector = start([sys.executable, "-m", "tally.ops", "collector"], env, tmp / "collector.log", server_cpus)
        try:
            url = f"http://127.0.0.1:{port}"
            wait_http(f"{url}/healthz")
            wrk(f"{url}/api/v1/collect", args.connections, args.warmup, clients=args.clients)
            raw = args.out / f"{args.clients}{'-paced' if args.rate else ''}.raw.txt"
            load_env = {**os.environ, "TALLY_BENCH_CLIENTS": args.clients, "TALLY_BENCH_RATE": str(args.rate)}
            load = subprocess.Popen(["wrk", "-t1", f"-c{args.connections}", f"-d{args.seconds + 4}s", "-s",
                                     str(SCRIPT), f"{url}/api/v1/collect"], env=load_env, stdout=subprocess.DEVNULL)
            time.sleep(2)
            spy = [str(Path(sys.executable).parent / "py-spy"), "record", "-p", str(collector.pid), "-d",
                   str(args.seconds), "-r", "250", "--gil", "--nonblocking"]
            subprocess.run([*spy, "--format", "raw", "-o", str(raw)], check=True, capture_output=True)
            load.wait()
        finally:
            stop(collector)
    inclusive, own, total = shares(raw)
    print(f"{total} samples of the event-loop thread holding the GIL ({args.clients} clients); "
          f"raw stacks in {raw}; load average {os.getloadavg()[0]:.2f}")
    print(f"{'inclusive %':>11} {'self %':>7}  function")
    for name, n in inclusive.most_common(args.top):
        print(f"{100 * n / total:11.1f} {100 * own[name] / total:7.1f}  {name}")
    print("\nlargest self:")
    for name, n in own.most_common(15):
        print(f"{100 * n / total:11.1f}  {name}")


if __name__ == "__main__":
    main()
