"""`tally collector [--workers N]`: one process, or N processes sharing one port.

With N > 1 this process becomes a small supervisor: it forks N workers that
each bind the port with SO_REUSEPORT (the kernel spreads connections over
them), restarts a worker that dies, and stops them all on SIGTERM/SIGINT.
Metrics switch to prometheus-client's multiprocess mode so /metrics, served
by whichever worker the scrape lands on, adds up all of them.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import shutil
import signal
import time
from multiprocessing.process import BaseProcess

import click

from tally.config import Settings

log = logging.getLogger("tally.collector")


@click.command()
@click.option("--workers", type=click.IntRange(1, 64), default=None,
              help="Processes sharing the port (default: TALLY_COLLECTOR_WORKERS).")
def collector(workers: int | None) -> None:
    """Run the edge collector (HTTP beacons -> Kafka) in the foreground."""
    from tally.runtime import load_settings, setup_logging

    settings = load_settings()
    setup_logging(settings)
    n = workers or settings.collector_workers
    if n == 1:
        from tally.producers.collector.app import run

        run(settings)
    else:
        supervise(settings, n)


def _worker(settings: Settings, index: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides; SIGTERM stops us
    from tally.producers.collector.app import run

    run(settings, worker_index=index, reuse_port=True)


def supervise(settings: Settings, n: int) -> None:
    # Must be set before any worker imports prometheus_client.
    prom_dir = settings.run_dir / "collector-metrics"
    shutil.rmtree(prom_dir, ignore_errors=True)
    prom_dir.mkdir(parents=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir)
    # fork: the workers start from this small, thread-free process (librdkafka's
    # threads and the event loop are created inside each worker).
    ctx = multiprocessing.get_context("fork")
    stopping = False

    def stop(_sig: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def start(index: int) -> BaseProcess:
        p = ctx.Process(target=_worker, args=(settings, index), name=f"collector-{index}")
        p.start()
        return p

    procs = {i: start(i) for i in range(n)}
    log.info("collector: %d workers on %s:%d", n, settings.collector_host, settings.collector_port)
    last_restart = dict.fromkeys(procs, 0.0)
    while not stopping:
        time.sleep(0.2)
        for i, p in list(procs.items()):
            if p.is_alive() or stopping:
                continue
            log.error("collector worker %d exited with %s; restarting", i, p.exitcode)
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(p.pid)
            # Back off a crash loop (e.g. the port is taken) instead of spinning.
            time.sleep(max(0.0, 1.0 - (time.monotonic() - last_restart[i])))
            last_restart[i] = time.monotonic()
            procs[i] = start(i)
    for p in procs.values():
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + 20
    for p in procs.values():
        p.join(max(0.1, deadline - time.monotonic()))
        if p.is_alive() and p.pid is not None:
            os.kill(p.pid, signal.SIGKILL)
            p.join(5)
