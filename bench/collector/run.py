"""Collector benchmark: `tally collector` vs a minimal aiohttp 204 handler, loaded by wrk.

    .venv/bin/python bench/collector/run.py [--duration 10] [--connections 64] [--warmup 20]
        [--rounds 3] [--no-single-client] [--no-paced] [--workers 2] [--collector-batch-ms MS]

Starts its own single-node Kafka broker (infra/kafka) in a temporary directory.
Both targets get the same wrk settings and the same realistic beacons
(beacons.lua: text/plain JSON as tally.js sends it, a mix of paths, referrers,
events and user agents, crawlers included) through a trusted reverse proxy: wrk's
peer, 127.0.0.1, is in TALLY_TRUSTED_PROXIES and the client is read from
X-Forwarded-For. By default every request comes from a fresh random public
address (3 in 4 IPv4, 1 in 4 IPv6), as real traffic mostly does, and the
collector runs with its default settings, rate limit included. The single-client
figure (one fixed address, rate limit off: at full speed one client is a flood)
is measured in the same rounds by a second collector process. Both servers run on
the same event loop (uvloop, the collector's).

Each target first gets --warmup seconds of the same load (the broker's JVM needs ~15 s of
load to compile its produce path; before that it takes 2-3x the CPU per request).

Runs, in this order, in one process run:
1. peak: `wrk -t1 -c<connections> -d<duration>` on the baseline and on the collector
   (one process), alternating for --rounds rounds (the machine is shared: alternating
   spreads the other tenants' load over both); the median round is reported, and the
   ratio of each round to the baseline run just before it. Each round is: baseline and
   collector with many clients, then baseline and single-client collector with one. Collector
   throughput is "accepted beacons/s": the rise of tally_collector_beacons_accepted_total
   (Kafka acks, acks=all) over the run, divided by the run time. Each run also reports
   the target process's CPU time per request, which other load disturbs far less than
   requests/s, and its peak RSS while loaded.
2. p99 at 70% of the collector's peak, open loop: wrk2 is not packaged in Debian, so the
   rate is held with wrk's Lua delay() hook: --paced-connections (default 1024) connections,
   one per visitor as in real traffic, take turns on one schedule of a slot every 1/rate
   seconds (beacons.lua). A connection waits for its answer before it takes its next slot,
   so the offered rate holds whatever the latency as long as fewer than that many requests
   are outstanding (1024 at 9k/s is over 100 ms of them): arrivals do not wait for answers,
   as visitors' beacons do not. With few connections (64, say) the rate is capped at
   connections / latency (64 / 7 ms is 9k/s), so a slow spell lowers the offered rate and
   hides its own queue. The achieved rate is reported next to the target
   (rate_held_at_70pct: within 3% of it; the p99 target counts only when it held). The
   baseline gets the same schedule and connections, so machine noise shows up in both. The
   Kafka ack latency of the collector's batches in that run is reported too
   (kafka_ack_at_70pct, with beacons per batch): requests are answered only after their
   batch's acks=all acknowledgement, a wait the minimal handler does not have.
3. peak with `tally collector --workers N` (default 2; RSS summed over supervisor and
   workers), many clients, reported against N x the one-process figure.

CPU placement (--pin, the default on a machine with 2 or more cores): the server under
test, baseline or collector, runs on CPU 0 with all its threads; wrk and the Kafka broker
run on the other CPUs. A collector process is measured on one core of its own, as it runs
at the edge, where the broker is on other machines. Without pinning, the broker's CPU for
the collector's batches is taken from the same 2 cores as the collector's, and the
baseline has no broker work. Phase 3 (--workers 2) is never pinned: it is there to use
every core. --no-pin measures the old, unpinned way.

Targets for one process, many clients: throughput >= 0.8 x baseline; p99 <= 20 ms at 70%
of peak; RSS <= 150 MB after --min-clients (1M) distinct clients: after phase 1 the
collector gets more of the same load until it has seen that many (--flood-seconds at most). Quote ratios measured in one run. The last line is one JSON object, with
ratio_vs_baseline, p99_at_70pct_ms, single_client_ratio and rss_mb_peak.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
HERE = Path(__file__).resolve().parent
SCRIPT = HERE / "beacons.lua"

from tally.ops.stack import http_ok  # noqa: E402

from tally.config import Settings  # noqa: E402
from tally.topics import ensure_topics  # noqa: E402


def wait_http(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if http_ok(url):
            return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up")


def wrk(url: str, connections: int, duration: float, rate: float = 0, clients: str = "many") -> dict:
    """rate: requests/s to hold (0: as fast as answered)."""
    env = {**os.environ, "TALLY_BENCH_RATE": str(rate), "TALLY_BENCH_CLIENTS": clients}
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(duration)}s", "--latency", "-s", str(SCRIPT), url],
                         capture_output=True, text=True, env=env, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)

    def pct(p: str) -> float:
        value, unit = re.search(rf"^\s+{p}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M).groups()
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "requests": total, "non_2xx": int(bad.group(1)) if bad else 0,
            "socket_errors": errors.group(1) if errors else "", "p50_ms": pct("50"), "p99_ms": pct("99")}


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) of a process and its children so far."""
    total = 0
    for p in process_tree(pid):
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except OSError:
            pass
    return total / os.sysconf("SC_CLK_TCK")


def loaded(pid: int, url: str, connections: int, duration: float, rate: float = 0,
           clients: str = "many") -> dict:
    """One wrk run against the process pid, with its CPU cost per request and peak RSS."""
    c0 = cpu_seconds(pid)
    with RssSampler(pid) as rss:
        out = wrk(url, connections, duration, rate, clients)
    out["cpu_us_per_request"] = round((cpu_seconds(pid) - c0) / max(out["requests"], 1) * 1e6, 1)
    out["rss_mb_peak"] = round(rss.peak_total, 1)
    out["rss_mb_peak_per_process"] = round(rss.peak_one, 1)
    return out


def paced(pid: int, url: str, target: float, duration: float, conns: int) -> dict:
    """A wrk run held at `target` requests/s (beacons.lua's schedule) over `conns` connections."""
    out = loaded(pid, url, conns, duration, target)
    out.update(target_rps=round(target, 1), connections=conns, rate_held=out["rps"] >= 0.97 * target)
    return out


def median_run(runs: list[dict]) -> dict:
    """The run with the median throughput, plus every run's figures."""
    ordered = sorted(runs, key=lambda r: r["rps"])
    mid = dict(ordered[len(ordered) // 2])
    mid["rounds_rps"] = [r["rps"] for r in runs]
    mid["rounds_cpu_us_per_request"] = [r["cpu_us_per_request"] for r in runs]
    return mid


def rss_mb(pids: list[int]) -> float:
    total = 0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total += int(line.split()[1])
        except OSError:
            pass
    return total / 1024


def process_tree(pid: int) -> list[int]:
    pids = [pid]
    try:
        children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        children = []
    return pids + [int(c) for c in children]


class RssSampler:
    """Peak RSS of a process (per process and summed over its children) while it is loaded."""

    def __init__(self, pid: int) -> None:
        self.pid, self.peak_total, self.peak_one = pid, 0.0, 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            pids = process_tree(self.pid)
            self.peak_total = max(self.peak_total, rss_mb(pids))
            self.peak_one = max([self.peak_one] + [rss_mb([p]) for p in pids])
            time.sleep(0.2)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._thread.join()


def accepted(base: str) -> float:
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        m = re.search(r"^tally_collector_beacons_accepted_total ([\d.e+]+)$", resp.read().decode(), re.M)
    return float(m.group(1)) if m else 0.0


def produce_histogram(base: str) -> dict[str, float]:
    """tally_collector_produce_seconds (batch handed to the Kafka client -> acks=all ack) as
    {le: cumulative count, "count": n, "sum": seconds}."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    out = {m[0]: float(m[1]) for m in re.findall(r'^tally_collector_produce_seconds_bucket\{le="([^"]+)"\} (\S+)$',
                                                  text, re.M)}
    for key in ("count", "sum"):
        m = re.search(rf"^tally_collector_produce_seconds_{key} (\S+)$", text, re.M)
        out[key] = float(m.group(1)) if m else 0.0
    return out


def ack_latency(before: dict[str, float], after: dict[str, float]) -> dict:
    """Kafka ack latency of the batches produced between two histogram readings: the part
    of a request's latency the collector waits for (it answers only after the ack)."""
    n = after["count"] - before["count"]
    if n <= 0:
        return {"batches": 0}
    share = {le: round((after[le] - before.get(le, 0.0)) / n, 3) for le in ("0.002", "0.005", "0.01", "0.02", "0.05")}
    return {"batches": int(n), "mean_ms": round(1000 * (after["sum"] - before["sum"]) / n, 2),
            **{f"share_le_{float(le) * 1000:g}ms": v for le, v in share.items()}}


def start(cmd: list[str], env: dict[str, str], log: Path, cpus: set[int] | None = None) -> subprocess.Popen:
    """cmd in its own session; on `cpus` (it and every thread and child it makes) when given."""
    def place() -> None:
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT,
                                start_new_session=True, preexec_fn=place)


def place_tree(pid: int, cpus: set[int]) -> None:
    """Every thread of pid and of its child processes onto cpus (each thread has its own affinity)."""
    for p in process_tree(pid):
        try:
            for task in Path(f"/proc/{p}/task").iterdir():
                os.sched_setaffinity(int(task.name), cpus)
        except OSError:
            pass


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 15)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait(10)


def collector_round(pid: int, base: str, connections: int, duration: float, clients: str) -> dict:
    """One loaded run of a collector, with its accepted beacons/s (Kafka acks) over the run."""
    before, t0 = accepted(base), time.monotonic()
    run = loaded(pid, f"{base}/api/v1/collect", connections, duration, clients=clients)
    elapsed = time.monotonic() - t0
    time.sleep(1.0)
    run["accepted_per_s"] = round((accepted(base) - before) / elapsed, 1)
    return run


def wait_baseline(proc: subprocess.Popen, base_url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(urllib.request.Request(f"{base_url}/api/v1/collect", data=b"{}"), timeout=1)
            return
        except Exception:
            time.sleep(0.2)


def peak_rounds(args: argparse.Namespace, baseline: subprocess.Popen, base_url: str,
                targets: list[tuple[str, subprocess.Popen, str, str]]) -> dict:
    """Alternating rounds: per round, for each (name, collector, url, clients) the baseline
    and then that collector under the same wrk load. Median round of each is reported."""
    runs: dict[str, list[dict]] = {}
    for _ in range(args.rounds):
        for name, proc, url, clients in targets:
            b = loaded(baseline.pid, f"{base_url}/api/v1/collect", args.connections, args.duration, clients=clients)
            c = collector_round(proc.pid, url, args.connections, args.duration, clients)
            runs.setdefault(f"baseline_{name}", []).append(b)
            runs.setdefault(name, []).append(c)
            print(f"round {name}: baseline {b['rps']}/s, collector {c['accepted_per_s']} accepted/s, "
                  f"ratio {c['accepted_per_s'] / b['rps']:.3f}", file=sys.stderr)
    out = {}
    for key, rs in runs.items():
        out[key] = median_run(rs)
        if "accepted_per_s" in rs[0]:
            out[key]["rounds_accepted_per_s"] = [r["accepted_per_s"] for r in rs]
            out[key]["accepted_per_s"] = sorted(out[key]["rounds_accepted_per_s"])[len(rs) // 2]
            # Ratio per round (the baseline next to it) as well as of the medians.
            base_rps = [r["rps"] for r in runs[f"baseline_{key}"]]
            out[key]["rounds_ratio"] = [round(r["accepted_per_s"] / b, 3) for r, b in zip(rs, base_rps, strict=True)]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--duration", type=int, default=10, help="seconds per wrk run")
    ap.add_argument("--connections", type=int, default=64, help="wrk connections for the peak runs")
    ap.add_argument("--rounds", type=int, default=3, help="alternating baseline/collector peak rounds")
    ap.add_argument("--warmup", type=int, default=20, help="seconds of load on each target before measuring")
    ap.add_argument("--pin", action=argparse.BooleanOptionalAction, default=(os.cpu_count() or 1) >= 2,
                    help="server under test on CPU 0, wrk and the broker on the others (default: on with 2+ cores)")
    ap.add_argument("--single-client", action=argparse.BooleanOptionalAction, default=True,
                    help="also measure one client (rate limit off), alternating with the many-client rounds")
    ap.add_argument("--paced", action=argparse.BooleanOptionalAction, default=True,
                    help="phase 2: p99 at 70%% of the many-client peak")
    ap.add_argument("--paced-connections", type=int, default=1024,
                    help="phase 2's connections (one per visitor): the schedule holds while fewer requests "
                         "than this are outstanding")
    ap.add_argument("--workers", type=int, default=2, help="phase 3: collector --workers N (0: skip)")
    ap.add_argument("--min-clients", type=int, default=1_000_000,
                    help="before phase 2, load the collector with new clients until it has seen this many "
                         "(at most --flood-seconds), for the RSS figure")
    ap.add_argument("--flood-seconds", type=int, default=300)
    ap.add_argument("--collector-batch-ms", type=float, default=None,
                    help="TALLY_COLLECTOR_BATCH_MS of the collectors (default: theirs); 0 sends each loop "
                         "pass's beacons at once, without waiting for company")
    args = ap.parse_args()
    load_start = os.getloadavg()
    every_cpu = os.sched_getaffinity(0)
    server_cpus = {min(every_cpu)} if args.pin else None
    if args.pin:
        # The broker started below and every wrk inherit this.
        os.sched_setaffinity(0, every_cpu - server_cpus)
    from tests.conftest import bench_kafka, free_port

    with tempfile.TemporaryDirectory(prefix="tally-bench-collector-") as tmp_s, \
            bench_kafka(Path(tmp_s), heap_mb=512) as bootstrap:
        tmp = Path(tmp_s)
        procs: list[subprocess.Popen] = []
        try:
            # The collector's defaults (rate limit on), behind a trusted reverse proxy:
            # wrk's peer is 127.0.0.1 and the client is read from X-Forwarded-For.
            env = {k: v for k, v in os.environ.items() if not k.startswith("TALLY_")}
            env.update({"TALLY_KAFKA_BOOTSTRAP": bootstrap, "TALLY_STATE_DIR": str(tmp / "state"),
                        "TALLY_TOPIC_PREFIX": f"bench{uuid.uuid4().hex[:6]}.", "TALLY_TOPIC_PARTITIONS": "4",
                        "TALLY_ALLOWED_SITES": "example.com", "TALLY_TRUSTED_PROXIES": "127.0.0.1",
                        "TALLY_LOG_LEVEL": "warning"})
            if args.collector_batch_ms is not None:
                env["TALLY_COLLECTOR_BATCH_MS"] = f"{args.collector_batch_ms:g}"
            ensure_topics(Settings.from_env(env))
            results: dict = {"connections": args.connections, "duration_s": args.duration, "wrk_threads": 1,
                             "pinned": bool(args.pin)}

            # 1. peak: baseline and one collector process, identical wrk settings, in
            # alternating rounds (the machine is shared; alternating spreads the noise).
            base_port = free_port()
            baseline = start([sys.executable, str(HERE / "baseline.py"), str(base_port)], env, tmp / "baseline.log",
                             server_cpus)
            procs.append(baseline)
            base_url = f"http://127.0.0.1:{base_port}"
            port = free_port()
            collector = start([sys.executable, "-m", "tally.ops", "collector"],
                              {**env, "TALLY_COLLECTOR_PORT": str(port)}, tmp / "collector.log", server_cpus)
            procs.append(collector)
            url = f"http://127.0.0.1:{port}"
            targets = [("collector", collector, url, "many")]
            if args.single_client:
                # One client at full speed is a flood to the rate limit: it is off for this one.
                port1 = free_port()
                one = start([sys.executable, "-m", "tally.ops", "collector"],
                            {**env, "TALLY_COLLECTOR_PORT": str(port1), "TALLY_RATE_LIMIT_PER_SECOND": "0",
                             "TALLY_STATE_DIR": str(tmp / "state-one")}, tmp / "collector-one.log", server_cpus)
                procs.append(one)
                targets.append(("collector_one_client", one, f"http://127.0.0.1:{port1}", "one"))
            for _name, _proc, target_url, _clients in targets:
                wait_http(f"{target_url}/healthz")
            wait_baseline(baseline, base_url)
            collect_base, collect_url = f"{base_url}/api/v1/collect", f"{url}/api/v1/collect"
            # Warm-up under the same load for both. The broker is a fresh JVM: until its JIT has
            # compiled the produce path (~15 s of load here) it burns 2-3x the CPU per request
            # on the cores it shares with wrk (and, unpinned, with the collector), which is
            # start-up cost, not the steady state an edge collector runs in.
            wrk(collect_base, args.connections, args.warmup)
            for _name, _proc, target_url, clients in targets:
                wrk(f"{target_url}/api/v1/collect", args.connections, args.warmup, clients=clients)
            results.update(peak_rounds(args, baseline, base_url, targets))
            peak = results["collector"]
            print(f"baseline peak: {results['baseline_collector']}", file=sys.stderr)
            print(f"collector peak: {peak}", file=sys.stderr)
            if args.single_client:
                stop(one)

            # RSS after a million distinct clients: more of the same load until the collector
            # has seen --min-clients of them (each request is a new address).
            deadline = time.monotonic() + args.flood_seconds
            with RssSampler(collector.pid) as flood_rss:
                while requests_seen(url) < args.min_clients and time.monotonic() < deadline:
                    wrk(collect_url, args.connections, min(30, max(1, deadline - time.monotonic())))
            results["collector_rss_mb_flood_peak"] = round(flood_rss.peak_total, 1)

            # 2. p99 at 70% of the collector's peak, and the baseline at the same rate.
            if args.paced:
                target = 0.7 * peak["rps"]
                for name, target_url, proc in (("collector", collect_url, collector),
                                               ("baseline", collect_base, baseline)):
                    hist = produce_histogram(url)
                    results[f"{name}_at_70pct"] = paced(proc.pid, target_url, target, args.duration,
                                                            args.paced_connections)
                    if name == "collector":
                        ack = ack_latency(hist, produce_histogram(url))
                        ack["beacons_per_batch"] = round(results[f"{name}_at_70pct"]["requests"] / max(ack["batches"], 1), 1)
                        results[f"{name}_at_70pct"]["kafka_ack"] = ack
                    print(f"{name} at 70% of peak: {results[f'{name}_at_70pct']}", file=sys.stderr)
            # The collector's RSS after every distinct client it has seen so far (each request
            # of the many-client load is a new address).
            results["collector_requests_seen"] = requests_seen(url)
            results["collector_rss_mb_now"] = round(rss_mb([collector.pid]), 1)
            stop(collector)
            stop(baseline)

            # 3. N workers on one port, with every CPU for everyone.
            if args.workers > 1:
                os.sched_setaffinity(0, every_cpu)
                place_tree(os.getpid(), every_cpu)
                port2 = free_port()
                collector2 = start([sys.executable, "-m", "tally.ops", "collector", "--workers", str(args.workers)],
                                   {**env, "TALLY_COLLECTOR_PORT": str(port2)}, tmp / "collector2.log")
                procs.append(collector2)
                url2 = f"http://127.0.0.1:{port2}"
                wait_http(f"{url2}/healthz")
                time.sleep(1.0)
                wrk(f"{url2}/api/v1/collect", args.connections, args.warmup)
                time.sleep(1.5)  # request counts reach the shared metrics once a second
                results["collector_workers"] = w = collector_round(collector2.pid, url2, args.connections,
                                                                   args.duration, "many")
                print(f"collector --workers {args.workers} peak: {w}", file=sys.stderr)
        finally:
            for p in procs:
                stop(p)
    print(json.dumps(summary(args, results, load_start)))


def requests_seen(base: str) -> int:
    """Beacon requests the collector has answered so far (tally_collector_requests_total)."""
    with urllib.request.urlopen(f"{base}/metrics", timeout=10) as resp:
        text = resp.read().decode()
    return int(sum(float(v) for v in re.findall(
        r'^tally_collector_requests_total\{route="/api/v1/collect",status="2\d\d"\} (\S+)$', text, re.M)))


def summary(args: argparse.Namespace, results: dict, load_start: tuple[float, float, float]) -> dict:
    b, c = results["baseline_collector"], results["collector"]
    ratio = round(c["accepted_per_s"] / b["rps"], 3)
    out: dict = {
        "bench": "collector",
        "clients": "many (a new public address per request, through a trusted proxy), default settings",
        "collector_batch_ms": "default" if args.collector_batch_ms is None else args.collector_batch_ms,
        "baseline_rps": b["rps"],
        "collector_accepted_per_s": c["accepted_per_s"],
        "ratio_vs_baseline": ratio,
        "rounds_ratio": c["rounds_ratio"],
        "baseline_cpu_us_per_request": b["cpu_us_per_request"],
        "collector_cpu_us_per_request": c["cpu_us_per_request"],
        "collector_p50_ms": c["p50_ms"],
        "collector_p99_ms": c["p99_ms"],
        "baseline_p99_ms": b["p99_ms"],
        "rss_mb_peak": max(c["rss_mb_peak"], results["collector_rss_mb_flood_peak"], results["collector_rss_mb_now"]),
        "distinct_clients_seen": results["collector_requests_seen"],
        "collector_rss_mb_after": results["collector_rss_mb_now"],
        "non_2xx": c["non_2xx"],
    }
    targets = {"throughput_ratio_ge_0.8": ratio >= 0.8, "rss_le_150mb": out["rss_mb_peak"] <= 150,
               "distinct_clients_ge_min": results["collector_requests_seen"] >= args.min_clients}
    if "collector_one_client" in results:
        one, b1 = results["collector_one_client"], results["baseline_collector_one_client"]
        out.update(single_client_accepted_per_s=one["accepted_per_s"], single_client_baseline_rps=b1["rps"],
                   single_client_ratio=round(one["accepted_per_s"] / b1["rps"], 3),
                   single_client_rounds_ratio=one["rounds_ratio"],
                   single_client_cpu_us_per_request=one["cpu_us_per_request"],
                   many_over_single_client=round(c["accepted_per_s"] / one["accepted_per_s"], 3))
    if "collector_at_70pct" in results:
        p70, b70 = results["collector_at_70pct"], results["baseline_at_70pct"]
        out.update(target_rps_70pct=p70["target_rps"], achieved_rps_at_70pct=p70["rps"],
                   rate_held_at_70pct=p70["rate_held"], paced_connections=p70["connections"],
                   baseline_achieved_rps_same_target=b70["rps"],
                   p50_at_70pct_ms=p70["p50_ms"], p99_at_70pct_ms=p70["p99_ms"],
                   baseline_p99_same_target_ms=b70["p99_ms"], kafka_ack_at_70pct=p70.get("kafka_ack"))
        out["non_2xx"] += p70["non_2xx"]
        targets["p99_at_70pct_le_20ms"] = p70["rate_held"] and p70["p99_ms"] <= 20
    if "collector_workers" in results:
        w = results["collector_workers"]
        out.update(workers=args.workers, workers_accepted_per_s=w["accepted_per_s"],
                   workers_vs_n_times_one_process=round(w["accepted_per_s"] / (args.workers * c["accepted_per_s"]), 3),
                   workers_rss_mb_total=w["rss_mb_peak"], workers_rss_mb_per_process=w["rss_mb_peak_per_process"])
        out["non_2xx"] += w["non_2xx"]
    out.update(load_average_1m_start=load_start[0], load_average_1m_end=os.getloadavg()[0],
               pinned=results["pinned"], targets_met=targets, details=results)
    return out


if __name__ == "__main__":
    main()
