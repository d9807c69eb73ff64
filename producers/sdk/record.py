"""The SDK's full path for one event: build the `product_event` record from track()'s
arguments and judge it with the catalog (tally.schemas.catalog.check), the one validator."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from tally.producers.sdk.context import with_request_id
from tally.schemas.catalog import CATALOG, Prop, canonical_list, check
from tally.schemas.reasons import EventProblem

from tally.clock import epoch_ms
from tally.ids import uuid7


class Rejection(ValueError):
    """The catalog (or the record's shape) says no; `problem` and `detail` say why."""

    def __init__(self, problem: EventProblem, detail: str) -> None:
        super().__init__(f"{problem}: {detail}")
        self.problem = problem
        self.detail = detail


def millis(value: datetime | int | float) -> int:
    if isinstance(value, datetime):
        if value.tzinfo is None:
            raise ValueError("naive datetime: pass an aware datetime (UTC)")
        return epoch_ms(value)
    return int(value)


_CONVERTED = (datetime, list, tuple, set, frozenset)


def _wire_value(prop: Prop | None, value: Any) -> Any:
    if isinstance(value, datetime):
        return millis(value)
    return value if prop is None else canonical_list(prop, value)


def product_record(event: str, tenant_id: str, workspace_id: str, actor: Any, subject: Any,
                   metadata: Mapping[str, Any] | None, occurred_at: datetime | int | None,
                   app: str) -> dict[str, Any]:
    """The record of one track() call, accepted by check(); Rejection otherwise.

    actor: a user id (str), an (actor_type, actor_id) pair, or None for the system.
    subject: a (subject_type, subject_id) pair, or None."""
    try:
        if actor is None:
            actor_type, actor_id = "system", ""
        elif isinstance(actor, str):
            actor_type, actor_id = "user", actor
        else:
            actor_type, actor_id = actor
        subject_type, subject_id = ("", None) if subject is None else subject
        spec = CATALOG.get(event)
        metadata = with_request_id(metadata)
        now = time.time_ns() // 1_000_000
        record = {
            "event_id": uuid7(now), "event": event,
            "feature_area": spec.feature_area if spec is not None else None,
            "tenant_id": tenant_id, "workspace_id": workspace_id,
            "actor_type": actor_type, "actor_id": actor_id,
            "subject_type": subject_type, "subject_id": subject_id,
            "occurred_at": now if occurred_at is None else millis(occurred_at),
            "app": app, "metadata": metadata or {},
        }
    except (TypeError, ValueError) as exc:
        raise Rejection(EventProblem.BAD_TYPE, f"{event!r}: {exc}") from None
    # An explicit occurred_at must be near now (catalog.DEFAULT_WINDOW_MS).
    bad = check(record, None if occurred_at is None else now)
    if (bad is not None and spec is not None and isinstance(metadata, Mapping)
            and any(isinstance(v, _CONVERTED) for v in metadata.values())):
        # Aware datetimes are sent as epoch ms and lists of enum values as their canonical
        # string; converted only when present, so the common call pays nothing for it.
        try:
            record["metadata"] = {k: _wire_value(spec.props.get(k), v) for k, v in metadata.items()}
        except ValueError as exc:
            raise Rejection(EventProblem.BAD_TYPE, f"{event}: {exc}") from None
        bad = check(record, None if occurred_at is None else now)
    if bad is not None:
        raise Rejection(*bad)
    return record
