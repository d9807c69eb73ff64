"""The one builder of each record that says something was lost or rejected: `bad_row`
(schema bad_row, topic bad-rows) and `drop_count` (schema drop_count, topic drops).

They take reasons and components as members of their enums (schemas/reasons.py) only: a
bare string is a TypeError, so nothing outside the closed sets can be written. The records
carry the plain string values (what the Avro fields hold)."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime
from typing import Any

from tally.schemas.reasons import BadRowReason, Component, DropReason
from tally.schemas.sensitive import kind

DETAIL_MAX = 1000  # characters of detail kept with a bad row
_RUN = re.compile(rb"[\x20-\x7e]{4,}")  # printable ASCII runs: where text sits in Avro bytes
_SEP = re.compile(r"([/&=#;,\s\"'()\[\]{}]+)")


def redact_text(text: str) -> str:
    """Text with query strings cut and every token that is personal data, a secret or an
    identifier-like value (a pseudonym, a UUID, a token) replaced by `:kind`."""
    head, q, _ = text.partition("?")
    parts = _SEP.split(head)
    out = "".join(p if not p or _SEP.fullmatch(p) or (k := kind(p)) is None else f":{k}" for p in parts)
    return out + ("?:query" if q else "")


def redact_bytes(original: bytes) -> bytes:
    """A dead letter's original with every printable run passed through redact_text: the
    bytes that made a record fail may be exactly the personal data it carried."""
    return _RUN.sub(lambda m: redact_text(m.group(0).decode("ascii")).encode("ascii", "replace"), original)


def _member(value: Any, kind: type) -> str:
    if value.__class__ is not kind:
        raise TypeError(f"expected a {kind.__name__} member, got {value!r} (schemas/reasons.py lists them)")
    return value.value


def bad_row(reason: BadRowReason, detail: str, component: Component, topic: str, partition: int,
            offset: int, original: bytes, failed_at: datetime | None = None,
            redacted: bool = False) -> dict[str, Any]:
    """A bad_row record: a redacted copy of the record that `component` could not accept, why,
    and where it was read from (topic "" and -1s when it was not read from Kafka). The
    detail and the original pass through redact_text/redact_bytes unless the caller already
    redacted the original field by field (`redacted`, e.g. beacons.redacted_beacons)."""
    original = bytes(original or b"")
    return {"reason": _member(reason, BadRowReason), "detail": redact_text(detail[:DETAIL_MAX]),
            "component": _member(component, Component), "source_topic": topic,
            "source_partition": partition, "source_offset": offset,
            "original": original if redacted else redact_bytes(original),
            "failed_at": failed_at or datetime.now(UTC)}


def drop_count(site: str, day: date | int, reason: DropReason, count: int, component: Component,
               source_partition: int = -1, source_offset: int = -1) -> dict[str, Any]:
    """A drop_count record: `count` events of one site and UTC day (a date, or days since the
    epoch) that `component` dropped for `reason`, from one input record (partition, offset)."""
    return {"site": site, "day": day, "reason": _member(reason, DropReason), "count": count,
            "component": _member(component, Component), "source_partition": source_partition,
            "source_offset": source_offset}
