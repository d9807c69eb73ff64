"""Sink benchmark: rows/s from Kafka into chDB through the sink, against a direct
clickhouse-connect columnar insert of the same rows, in the same run.

    .venv/bin/python bench/sink.py [--rows 600000] [--per-record 50] [--bootstrap host:port]

Without --bootstrap it starts its own single-node Kafka broker (infra/kafka) in a
temporary directory and stops it at the end. The topic is filled first, so the sink
always has a backlog: it inserts TALLY_SINK_MAX_INSERT_ROWS (default 100,000) rows
at a time. Everything is measured twice, and each sink figure is compared with a
baseline that inserts batches of the same size:

- sink_rows_per_s: the sink (tally.sinks.sink.Sink, the code `tally sink` runs) with
  its default settings, consuming the rows as `pageview_batch` records from the
  broker and inserting them into a fresh chDB directory, with its intents, dedup
  tokens and offset commits; measured from its first insert to its last, so
  consumer-group join time is excluded;
- baseline_rows_per_s: `client.insert(..., column_oriented=True)` of the same rows,
  already as Python column lists, in batches of the sink's insert size, into an
  empty `pageviews` table of a fresh chDB directory;
- engine_native_rows_per_s: the engine alone, the same batches as Native bytes
  serialized beforehand and inserted from files (no Python per row): the ceiling;
- the same three with fixed 10,000-row inserts (TALLY_SINK_MAX_INSERT_ROWS =
  TALLY_SINK_BATCH_ROWS), the `*_fixed` keys;
- *_cpu_us_per_row: CPU seconds of this process (all threads: chDB's parsing,
  writing and background merges, librdkafka) per row over the same interval.
- ratio = sink / baseline. Targets: ratio >= 0.7 and >= 250,000 rows/s.
The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import sys
import tempfile
import threading
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from confluent_kafka import Producer  # noqa: E402
from tally.schemas.codec import default_codec  # noqa: E402

from tally.config import Settings  # noqa: E402
from tally.kafka import producer_config  # noqa: E402
from tally.topics import ensure_topics  # noqa: E402

PARTITIONS = 4


def items(n: int) -> list[dict]:
    rnd = random.Random(7)
    now = int(time.time() * 1000)
    sources = ["direct", "search", "social", "other"]
    out = []
    for i in range(n):
        out.append({"event_id": str(uuid.uuid4()), "received_at": now - rnd.randrange(86_400_000),
                    "site": f"site{i % 5}.test", "hostname": f"site{i % 5}.test", "path": f"/page/{rnd.randrange(500)}",
                    "event": "pageview", "visitor_id": rnd.getrandbits(63), "referrer_host": "www.google.com",
                    "referrer_source": sources[i % 4], "utm_source": "news" if i % 10 == 0 else None,
                    "utm_medium": None, "utm_campaign": None, "browser": "Firefox", "os": "Linux",
                    "device": "desktop", "user_agent": None, "props": {}})
    return out


def cpu_seconds() -> float:
    """CPU time of this process, every thread (chDB's insert and merge threads, librdkafka's)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def baseline(rows: list[dict], insert_rows: int, state: Path) -> dict[str, float]:
    """The direct columnar insert, then the engine alone: the same batches as Native
    bytes serialized beforehand, inserted from a file (no Python per row at all)."""
    from tally.sinks.migrate import migrate
    from tally.sinks.tables import PAGEVIEW_COLUMNS
    from tally.sinks.warehouse import connect

    settings = Settings.from_env({"TALLY_STATE_DIR": str(state)})
    client = connect(settings)
    migrate(client, settings)
    cols = []
    for c in PAGEVIEW_COLUMNS:
        values = [r[c] for r in rows]
        if c == "event_id":
            values = [uuid.UUID(v) for v in values]
        elif c == "received_at":
            values = [datetime.fromtimestamp(v / 1000, tz=UTC) for v in values]
        cols.append(values)
    # The same engine setting the sink uses for pageviews (see sinks/sink.py), so the
    # comparison is of the two ways in, not of two table configurations.
    same = {"optimize_on_insert": 0}
    t0, c0 = time.perf_counter(), cpu_seconds()
    for start in range(0, len(rows), insert_rows):
        client.insert("pageviews", [c[start:start + insert_rows] for c in cols],
                      column_names=list(PAGEVIEW_COLUMNS), column_oriented=True, settings=same)
    elapsed, cpu = time.perf_counter() - t0, cpu_seconds() - c0
    assert client.query("SELECT count() FROM pageviews").result_rows[0][0] == len(rows)

    names = ", ".join(PAGEVIEW_COLUMNS)
    client.command("CREATE TABLE pageviews_native AS pageviews")
    files = []
    for i, start in enumerate(range(0, len(rows), insert_rows)):
        path = state / f"block{i}.native"
        client.command(f"INSERT INTO FUNCTION file('{path}', 'Native') SELECT {names} FROM pageviews "
                       f"ORDER BY cityHash64(event_id) LIMIT {insert_rows} OFFSET {start}")
        files.append(path)
    time.sleep(1)  # let the baseline's merges finish before timing the engine alone
    t1, c1 = time.perf_counter(), cpu_seconds()
    for i, path in enumerate(files):
        client.command(f"INSERT INTO pageviews_native ({names}) FROM INFILE '{path}' "
                       f"SETTINGS insert_deduplication_token = 'n{i}', optimize_on_insert = 0 FORMAT Native")
    native_elapsed, native_cpu = time.perf_counter() - t1, cpu_seconds() - c1
    assert client.query("SELECT count() FROM pageviews_native").result_rows[0][0] == len(rows)
    client.close()
    n = len(rows)
    return {"rows_per_s": n / elapsed, "cpu_us_per_row": cpu / n * 1e6,
            "native_rows_per_s": n / native_elapsed, "native_cpu_us_per_row": native_cpu / n * 1e6}


def through_sink(settings: Settings, total: int) -> dict[str, float]:
    from tally.sinks import sink as sink_mod
    from tally.sinks.metrics import ROWS
    from tally.sinks.migrate import migrate
    from tally.sinks.warehouse import connect

    client = connect(settings)
    migrate(client, settings)
    counter = ROWS.labels(table="pageviews")
    before = counter._value.get()
    s = sink_mod.Sink(settings, client)
    thread = threading.Thread(target=s.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 600
    t0 = c0 = first = None
    flushes0 = 0
    while time.monotonic() < deadline:
        done = counter._value.get() - before
        if t0 is None and done > 0:
            t0, c0, first, flushes0 = time.perf_counter(), cpu_seconds(), done, s.flushes
        if done >= total:
            break
        time.sleep(0.002)
    t1, c1, flushes = time.perf_counter(), cpu_seconds(), s.flushes - flushes0
    s.stopping.set()
    thread.join(30)
    stored = client.query("SELECT count() FROM pageviews").result_rows[0][0]
    client.close()
    n = total - first
    if n <= 0:  # timing starts at the first insert, so one insert leaves nothing to time
        raise SystemExit(f"all {total:,} rows arrived in one insert: nothing to time after it; "
                         f"use --rows of several times TALLY_SINK_MAX_INSERT_ROWS")
    return {"rows_per_s": n / (t1 - t0), "cpu_us_per_row": (c1 - c0) / n * 1e6, "stored": stored,
            "rows_per_insert": n / max(flushes, 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rows", type=int, default=600_000)
    ap.add_argument("--per-record", type=int, default=50, help="pageviews per pageview_batch record")
    ap.add_argument("--batch-rows", type=int, default=10_000, help="TALLY_SINK_BATCH_ROWS for both sides")
    ap.add_argument("--bootstrap", default="")
    args = ap.parse_args()

    from tests.conftest import bench_kafka

    with tempfile.TemporaryDirectory(prefix="tally-bench-sink-") as tmp_dir, \
            bench_kafka(Path(tmp_dir), args.bootstrap) as bootstrap:
        tmp = Path(tmp_dir)
        tag = uuid.uuid4().hex[:6]
        settings = Settings.from_env({"TALLY_KAFKA_BOOTSTRAP": bootstrap, "TALLY_TOPIC_PREFIX": f"bench{tag}.",
                                      "TALLY_TOPIC_PARTITIONS": str(PARTITIONS), "TALLY_APP_ID": f"bench-{tag}",
                                      "TALLY_STATE_DIR": str(tmp / "sink"), "TALLY_LOG_LEVEL": "warning",
                                      "TALLY_SINK_BATCH_ROWS": str(args.batch_rows)})
        ensure_topics(settings)
        rows = items(args.rows)
        codec = default_codec()
        producer = Producer(producer_config(settings))
        topic = settings.topic("pageviews.enriched")
        for n, start in enumerate(range(0, len(rows), args.per_record)):
            batch = {"source_partition": n % PARTITIONS, "source_offset": n,
                     "items": rows[start:start + args.per_record]}
            producer.produce(topic, codec.encode("pageview_batch", batch), partition=n % PARTITIONS)
            if n % 1000 == 0:
                producer.poll(0)
        assert producer.flush(60) == 0
        print(f"produced {len(rows)} rows in {len(rows) // args.per_record} records", flush=True)

        out: dict[str, float | int | bool] = {"bench": "sink", "rows": len(rows), "rows_per_record": args.per_record,
                                              "batch_rows": settings.sink_batch_rows,
                                              "max_insert_rows": settings.sink_max_insert_rows}
        for suffix, max_insert in (("", settings.sink_max_insert_rows), ("_fixed", settings.sink_batch_rows)):
            run = Settings.from_env({**settings.env, "TALLY_SINK_MAX_INSERT_ROWS": str(max_insert),
                                     "TALLY_APP_ID": f"bench-{tag}{suffix}",
                                     "TALLY_STATE_DIR": str(tmp / f"sink{suffix}")})
            label = f"{max_insert:,}-row inserts"
            sink = through_sink(run, len(rows))
            assert sink["stored"] == len(rows), f"sink stored {sink['stored']} of {len(rows)} rows"
            print(f"[{label}] through the sink:       {sink['rows_per_s']:,.0f} rows/s, "
                  f"{sink['cpu_us_per_row']:.2f} CPU us/row ({sink['rows_per_insert']:,.0f} rows per insert)",
                  flush=True)
            base = baseline(rows, max_insert, tmp / f"baseline{suffix}")
            print(f"[{label}] direct columnar insert: {base['rows_per_s']:,.0f} rows/s, "
                  f"{base['cpu_us_per_row']:.2f} CPU us/row", flush=True)
            print(f"[{label}] engine alone (Native):  {base['native_rows_per_s']:,.0f} rows/s, "
                  f"{base['native_cpu_us_per_row']:.2f} CPU us/row", flush=True)
            ratio = sink["rows_per_s"] / base["rows_per_s"]
            print(f"[{label}] ratio sink/direct: {ratio:.2f}", flush=True)
            out.update({f"sink_rows_per_s{suffix}": round(sink["rows_per_s"]),
                        f"sink_cpu_us_per_row{suffix}": round(sink["cpu_us_per_row"], 2),
                        f"sink_rows_per_insert{suffix}": round(sink["rows_per_insert"]),
                        f"baseline_rows_per_s{suffix}": round(base["rows_per_s"]),
                        f"baseline_cpu_us_per_row{suffix}": round(base["cpu_us_per_row"], 2),
                        f"engine_native_rows_per_s{suffix}": round(base["native_rows_per_s"]),
                        f"engine_native_cpu_us_per_row{suffix}": round(base["native_cpu_us_per_row"], 2),
                        f"ratio{suffix}": round(ratio, 3)})
        out.update({"target_ratio": 0.7, "target_rows_per_s": 250_000,
                    "meets_targets": out["ratio"] >= 0.7 and out["sink_rows_per_s"] >= 250_000})
        print("targets: ratio >= 0.7 and >= 250,000 rows/s, with the default settings")
        print(json.dumps(out))


if __name__ == "__main__":
    main()
