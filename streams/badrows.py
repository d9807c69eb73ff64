"""Bad rows and drop counts produced by the worker (schemas bad_row and drop_count)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

# Closed set of reasons the worker uses for bad rows.
BAD_ROW_REASONS = ("undecodable", "invalid_event", "too_late", "no_salt")


def bad_row(reason: str, detail: str, topic: str, partition: int, offset: int, original: bytes) -> dict[str, Any]:
    assert reason in BAD_ROW_REASONS, reason
    return {"reason": reason, "detail": detail[:1000], "component": "worker", "source_topic": topic,
            "source_partition": partition, "source_offset": offset, "original": original,
            "failed_at": datetime.now(UTC)}


def drop_counts(counts: dict[tuple[str, date, str], int], partition: int, offset: int) -> list[dict[str, Any]]:
    return [{"site": site, "day": day, "reason": reason, "count": n, "component": "worker",
             "source_partition": partition, "source_offset": offset}
            for (site, day, reason), n in sorted(counts.items())]
