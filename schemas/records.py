"""The one builder of each record that says something was lost or rejected: `bad_row`
(schema bad_row, topic bad-rows) and `drop_count` (schema drop_count, topic drops).

They take reasons and components as members of their enums (schemas/reasons.py) only: a
bare string is a TypeError, so nothing outside the closed sets can be written. The records
carry the plain string values (what the Avro fields hold)."""

from __future__ import annotations

from datetime import UTC, date, datetime
from typing import Any

from tally.schemas.reasons import BadRowReason, Component, DropReason

DETAIL_MAX = 1000  # characters of detail kept with a bad row


def _member(value: Any, kind: type) -> str:
    if value.__class__ is not kind:
        raise TypeError(f"expected a {kind.__name__} member, got {value!r} (schemas/reasons.py lists them)")
    return value.value


def bad_row(reason: BadRowReason, detail: str, component: Component, topic: str, partition: int,
            offset: int, original: bytes, failed_at: datetime | None = None) -> dict[str, Any]:
    """A bad_row record: the original bytes of a record that `component` could not accept,
    why, and where it was read from (topic "" and -1s when it was not read from Kafka)."""
    return {"reason": _member(reason, BadRowReason), "detail": detail[:DETAIL_MAX],
            "component": _member(component, Component), "source_topic": topic,
            "source_partition": partition, "source_offset": offset, "original": bytes(original or b""),
            "failed_at": failed_at or datetime.now(UTC)}


def drop_count(site: str, day: date | int, reason: DropReason, count: int, component: Component,
               source_partition: int = -1, source_offset: int = -1) -> dict[str, Any]:
    """A drop_count record: `count` events of one site and UTC day (a date, or days since the
    epoch) that `component` dropped for `reason`, from one input record (partition, offset)."""
    return {"site": site, "day": day, "reason": _member(reason, DropReason), "count": count,
            "component": _member(component, Component), "source_partition": source_partition,
            "source_offset": source_offset}
