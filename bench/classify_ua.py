"""`tally classify-ua` throughput: cold (every UA new) and warm (a realistic, repetitive mix).

    .venv/bin/python bench/classify_ua.py [--lines 300000]

- cold_uas_per_s: every distinct UA of tests/data (15k browsers and bots) once, cache empty,
  in-process (classify_ua + JSON line), i.e. what an operator pays on a log of new UAs.
- warm_uas_per_s: the real command (`python -m tally.ops classify-ua`, stdin -> stdout) on
  --lines lines drawn Zipf-like from 2,000 real UAs (95% browsers, 5% bots), process start
  and pattern loading included. Target >= 100,000 UAs/s.
- baseline_cat_per_s: the same input through `cat` (pipe and I/O cost alone), same run;
  ratio = warm / baseline.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lines", type=int, default=300_000)
    args = ap.parse_args()
    browsers = (REPO / "tests/data/ua_browsers.txt").read_text().splitlines()
    bots = (REPO / "tests/data/ua_bots.txt").read_text().splitlines()

    from tally.streams.bots import classify_ua

    classify_ua("warm up the pattern sets")  # pattern compilation is not per-UA work
    classify_ua.cache_clear()
    distinct = list(dict.fromkeys(browsers + bots))
    t0 = time.perf_counter()
    for ua in distinct:
        v = classify_ua(ua)
        json.dumps({"ua": ua, "bot": v.bot, "reason": v.reason, "rule": v.rule})
    cold = len(distinct) / (time.perf_counter() - t0)

    rnd = random.Random(3)
    pool = rnd.sample(browsers, 1900) + rnd.sample(bots, 100)
    weights = [1 / (i + 1) ** 1.1 for i in range(len(pool))]
    rnd.shuffle(pool)
    lines = rnd.choices(pool, weights=weights, k=args.lines)
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(lines) + "\n")
        path = fh.name

    def timed(cmd: list[str]) -> tuple[float, int]:
        with open(path, "rb") as stdin:
            t = time.perf_counter()
            out = subprocess.run(cmd, stdin=stdin, capture_output=True, check=True, cwd=REPO).stdout
            return time.perf_counter() - t, out.count(b"\n")

    warm_s, n = timed([sys.executable, "-m", "tally.ops", "classify-ua"])
    assert n == args.lines, n
    cat_s, _ = timed(["cat"])
    warm, base = args.lines / warm_s, args.lines / cat_s
    print(f"cold: {cold:,.0f} UAs/s over {len(distinct):,} distinct UAs", file=sys.stderr)
    print(f"warm: {warm:,.0f} UAs/s ({args.lines:,} lines, 2,000 distinct, process start included)",
          file=sys.stderr)
    print(json.dumps({"lines": args.lines, "cold_uas_per_s": round(cold), "warm_uas_per_s": round(warm),
                      "baseline_cat_per_s": round(base), "ratio": round(warm / base, 4)}))


if __name__ == "__main__":
    main()
