"""How each topic's records become rows: the target table, its columns, and a row builder."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from tally.schemas.codec import Codec

PAGEVIEW_COLUMNS = (
    "event_id", "received_at", "site", "hostname", "path", "event", "visitor_id",
    "referrer_host", "referrer_source", "utm_source", "utm_medium", "utm_campaign",
    "browser", "os", "device", "user_agent", "props",
)


@dataclass(frozen=True)
class TableMapping:
    topic: str  # without prefix
    table: str
    columns: tuple[str, ...]
    rows: Callable[[Codec, bytes], Iterable[list[Any]]]


def _ts(ms: int | datetime) -> datetime:
    if isinstance(ms, datetime):
        return ms
    return datetime.fromtimestamp(ms / 1000, tz=UTC)


def pageview_rows(codec: Codec, value: bytes) -> Iterable[list[Any]]:
    batch = codec.decode("pageview_batch", value)
    for pv in batch["items"]:
        row = [pv[c] for c in PAGEVIEW_COLUMNS]
        row[0] = uuid.UUID(str(row[0]))
        row[1] = _ts(row[1])
        yield row


MAPPINGS = (
    TableMapping("pageviews.enriched", "pageviews", PAGEVIEW_COLUMNS, pageview_rows),
)
