"""The worker's view of its own health, every few seconds: the watchdog's verdict on the
partitions it holds (streams/watchdog.py), written as its health report for `tally status`
(tally/health.py). A stall ends the process with status 75 so a supervisor restarts it."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Mapping
from typing import Any

from tally.streams.state import StateStore
from tally.streams.watchdog import Watchdog

from tally import health
from tally.config import Settings

log = logging.getLogger(__name__)

STALLED_EXIT = 75  # EX_TEMPFAIL: the watchdog found the worker stuck; restart it


def interval(settings: Settings) -> float:
    """How often the watchdog looks: often enough to act within ~1/4 of the stall time."""
    return max(0.5, min(10.0, settings.worker_stall_seconds / 4)) if settings.worker_stall_seconds else 10.0


async def check(settings: Settings, app: Any, watchdog: Watchdog, stores: Mapping[str, StateStore],
                about: Mapping[str, Any]) -> None:
    """One look: end offsets of the held partitions against the work done. `about` goes into
    the health report as it is (e.g. where the worker's metrics are served)."""
    held = [tp for tp in app.consumer.assignment() if tp.topic in watchdog.stages]
    # End offsets through aiokafka (Faust's consumer). Not librdkafka's admin client: its
    # coordinator requests can abort the process when the broker goes away
    # (confluentinc/librdkafka#4605).
    try:
        ends = {(tp.topic, tp.partition): end for tp, end in
                (await asyncio.wait_for(app.consumer.highwaters(*held), 10)).items()} if held else {}
    except Exception as exc:  # the broker is unreachable: that is an outage, not a stall
        why = str(exc) or type(exc).__name__
        log.warning("watchdog: end offsets unavailable (%s)", why)
        # Say so rather than leave the last "ok" standing for `tally status`.
        health.write(settings, "worker", {"state": "no_broker", "held": len(held),
                                          "detail": f"end offsets unavailable: {why}"[:300], **about})
        return
    # Faust's record of this member's commits: where an unprocessed partition starts.
    commits = getattr(app.consumer, "_committed_offset", {})
    committed = {(tp.topic, tp.partition): commits.get(tp) for tp in held}
    stall = watchdog.check(ends, committed)
    report = {"state": "ok", "held": len(held), "lag": watchdog.lag(ends, committed),
              "waiting_for": watchdog.waits(),
              "rebuilding": {k: s.loading() for k, s in stores.items() if s.loading()}, **about}
    if stall is not None:
        log.critical("stalled: %s; exiting (status %d) so a supervisor restarts the worker",
                     stall.describe(), STALLED_EXIT)
        health.write(settings, "worker", {**report, "state": "stalled", "detail": stall.describe()})
        logging.shutdown()
        os._exit(STALLED_EXIT)
    health.write(settings, "worker", report)
