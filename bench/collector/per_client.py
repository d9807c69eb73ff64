"""The collector's per-client work in one process: a new client against a known one, and
the memory a million distinct clients leave behind.

    .venv/bin/python bench/collector/per_client.py [--clients 1000000]

Runs what `Collector._accept` does per beacon after parsing, with the collector's
default settings and 127.0.0.1 as trusted proxy: resolve the client from the peer and
X-Forwarded-For, pseudonymise it, look it up in the datacenter table, charge its
rate-limit bucket, encode the beacon. Addresses are random public ones (3 in 4 IPv4,
1 in 4 IPv6), as bench/collector/beacons.lua sends. Reports microseconds per beacon
for new clients and for one known client, alternating (min of the rounds), and the
RSS growth after --clients distinct clients pushed through in 10 simulated minutes
(the limiter's clock is driven, so its generations turn as they would).
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from tally.producers.collector.app import Collector  # noqa: E402
from tally.producers.collector.encode import PieceEncoder  # noqa: E402
from tally.producers.collector.ratelimit import RateLimiter  # noqa: E402
from tally.schemas.codec import default_codec  # noqa: E402

from tally.config import Settings  # noqa: E402

UA = "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/126.0.0.0 Safari/537.36"
RESERVED = {0, 10, 100, 127, 169, 172, 192, 198, 203}


def addresses(rng: random.Random, n: int) -> list[str]:
    out = []
    for _ in range(n):
        if rng.random() < 0.25:
            groups = [rng.randint(0x2400, 0x2C0F), *(rng.getrandbits(16) for _ in range(7))]
            out.append(":".join(f"{g:x}" for g in groups))
        else:
            a = rng.randint(1, 223)
            while a in RESERVED:
                a = rng.randint(1, 223)
            out.append(f"{a}.{rng.getrandbits(8)}.{rng.getrandbits(8)}.{rng.randint(1, 254)}")
    return out


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def per_beacon(collector: Collector, encoder: PieceEncoder, xffs: list[str], clock: list[float],
               step: float) -> float:
    """Microseconds per beacon for the per-client work of _accept, over these XFF values."""
    client, allow, item = collector.client, collector.limiter.allow, encoder.item
    t0 = time.perf_counter()
    for i, xff in enumerate(xffs):
        clock[0] += step
        pseudonym, key, datacenter, country = client("127.0.0.1", (xff,))
        allow(key)
        item(1_700_000_000_000 + i // 20, "example.com", "/pricing", None, "pageview", {}, UA, pseudonym, datacenter,
             country)
    return (time.perf_counter() - t0) / len(xffs) * 1e6


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--clients", type=int, default=1_000_000, help="distinct clients for the memory figure")
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    env = {"TALLY_STATE_DIR": tempfile.mkdtemp(prefix="tally-per-client-"), "TALLY_ALLOWED_SITES": "example.com",
           "TALLY_TRUSTED_PROXIES": "127.0.0.1", "TALLY_EDGE_SECRET": "bench-edge-secret-Qw7Zx3Kp9Lm2Rt5Vb8Nc4"}
    settings = Settings.from_env(env)
    collector = Collector(settings)
    clock = [0.0]
    collector.limiter = RateLimiter(settings.rate_limit_per_second, settings.rate_limit_burst, clock=lambda: clock[0])
    encoder = PieceEncoder(default_codec())
    rng = random.Random(18)
    fresh, known = [], []
    for _ in range(args.rounds):
        fresh.append(per_beacon(collector, encoder, addresses(rng, 50_000), clock, 600 / args.clients))
        known.append(per_beacon(collector, encoder, ["81.2.69.160"] * 50_000, clock, 600 / args.clients))
    before = rss_mb()
    seen = 0
    while seen < args.clients:
        batch = addresses(rng, min(100_000, args.clients - seen))
        per_beacon(collector, encoder, batch, clock, 600 / args.clients)
        seen += len(batch)
        del batch
    summary = {"bench": "collector_per_client", "new_client_us": round(min(fresh), 2),
               "known_client_us": round(min(known), 2),
               "new_over_known": round(min(fresh) / min(known), 3),
               "rounds_new_us": [round(x, 2) for x in fresh], "rounds_known_us": [round(x, 2) for x in known],
               "distinct_clients": seen, "rss_mb_before": round(before, 1), "rss_mb_after": round(rss_mb(), 1),
               "rate_limit_clients_held": len(collector.limiter), "load_average_1m": os.getloadavg()[0]}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
