"""Product telemetry (seed 003): revalidate SDK events against the catalog, then count them
per event family (feature area), per tenant, per day, and count active workspaces.

product.events is keyed by tenant, so every tenant (and each of its workspaces) lives in
exactly one partition: per-partition distinct workspace counts add up exactly, also for
the all-tenants scope `*`.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np
from tally.schemas import catalog
from tally.schemas.codec import Codec, DecodeError
from tally.schemas.reasons import BadRowReason, Component
from tally.schemas.records import bad_row
from tally.streams.windows import Delta, day_start

from tally.clock import epoch_ms
from tally.ids import fingerprints


def workspace_id(tenant: str, workspace: str) -> int:
    digest = hashlib.blake2b(f"{tenant}\x00{workspace}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big")


def product_delta(codec: Codec, value: bytes, topic: str, partition: int, offset: int,
                  now_ms: int, lateness_ms: int) -> tuple[Delta, dict[str, Any] | None]:
    """The delta of one product.events record, or an empty delta plus a bad row.

    An empty delta is still applied: it moves the watermark, so a replay stays a no-op."""
    d = Delta(partition, offset)
    try:
        event = codec.decode("product_event", value)
    except DecodeError as exc:
        return d, bad_row(BadRowReason.UNDECODABLE, str(exc), Component.WORKER, topic, partition, offset, value)
    problem = catalog.check(event)
    if problem is not None:
        reason, detail = problem
        return d, bad_row(BadRowReason.INVALID_EVENT, f"{reason}: {detail}", Component.WORKER, topic, partition,
                          offset, value)
    occurred = event["occurred_at"]
    ms = epoch_ms(occurred)
    if ms < now_ms - lateness_ms:
        return d, bad_row(BadRowReason.TOO_LATE, f"occurred_at {ms} is older than the allowed lateness",
                          Component.WORKER, topic, partition, offset, value)
    problem = catalog.check_occurred_at(event, now_ms, lateness_ms)  # e.g. stamped in 2099
    if problem is not None:
        return d, bad_row(BadRowReason.INVALID_EVENT, f"{problem[0]}: {problem[1]}", Component.WORKER, topic,
                          partition, offset, value)
    family = catalog.CATALOG[event["event"]].feature_area
    ids = np.array([workspace_id(event["tenant_id"], event["workspace_id"])], dtype=np.uint64)
    d.product[(event["tenant_id"], family, day_start(ms))] = (1, ids)
    # An SDK that sends an event again (after a crash, say) sends the same event_id and
    # occurred_at: stage 2 counts it once (windows.PartitionState.apply).
    d.event_ids = fingerprints([str(event["event_id"]).encode()])
    d.event_times = [ms]
    return d, None
