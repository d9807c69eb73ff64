"""Why an event was dropped or a record rejected: closed, typed sets, shared by the collector,
the stream worker, the sink and the SDK.

- `DropReason`: an event dropped *and counted*, never stored: `drop_count.reason` in the
  `drops` topic and table, the collector's `tally_collector_beacons_dropped_total`, the
  worker's `tally_worker_dropped_total`, the SDK's `Stats.dropped`.
- `BadRowReason`: a record rejected to `bad-rows`, kept with its original bytes
  (`bad_row.reason`).
- `EventProblem`: what `catalog.check()` finds wrong with a product event. The SDK counts a
  rejected event by its problem (`Stats.dropped`); the worker and the sink send it to
  bad rows as `invalid_event`, the problem named in the detail.

The Avro `reason` fields stay strings: an Avro enum there would make every new reason an
incompatible schema change (FULL compatibility, `tally schemas check`). The record builders
(schemas/records.py) and the counters take members of these enums only, so the set the
code can emit is exactly what is listed here (tests/test_reasons.py).
"""

from __future__ import annotations

from enum import StrEnum


class DropReason(StrEnum):
    # At the edge (the collector), answered like an accepted beacon (spool_full: 503)
    GPC = "gpc"  # the browser sent Sec-GPC: 1 (TALLY_HONOR_GPC)
    DNT = "dnt"  # the browser sent DNT: 1 (TALLY_HONOR_DNT)
    EMPTY_USER_AGENT = "empty_user_agent"  # no User-Agent, when TALLY_DROP_EMPTY_UA is on (edge and worker)
    RATE_LIMITED = "rate_limited"  # over the per-client rate limit
    SPOOL_FULL = "spool_full"  # broker unreachable and the spool full
    # At the edge, one count per prop removed from an accepted beacon (minimise.py)
    PROP_NOT_ALLOWED = "prop_not_allowed"  # key not on TALLY_PROPS_ALLOWLIST for the site
    PROP_UNSAFE_VALUE = "prop_unsafe_value"  # allowlisted key, value long or personal data
    SPOOL_CORRUPT = "spool_corrupt"  # a spooled batch found corrupt on open or at replay (per batch)
    # In the stream worker's stage 1
    DATACENTER = "datacenter"  # the client address is in a cloud, hosting or crawler range
    HEADLESS = "headless"  # an automation framework or headless browser
    BOT = "bot"  # a crawler pattern, uap-core's Spider class, or one of our shape rules
    REFERRER_SPAM = "referrer_spam"  # the referrer is on TALLY_REFERRER_SPAM_FILE's list
    # In the SDK (catalog rejections are counted by their EventProblem)
    QUEUE_FULL = "queue_full"  # no room in the queue within TALLY_SDK_MAX_BLOCK_MS
    DELIVERY_FAILED = "delivery_failed"  # not acknowledged within TALLY_SDK_DELIVERY_TIMEOUT_MS
    ENCODE_ERROR = "encode_error"  # a record check() accepted could not be encoded (a bug)
    EXIT_TIMEOUT = "exit_timeout"  # still queued when the exit flush ended
    CLOSED = "closed"  # track() after close()
    MIDDLEWARE_ERROR = "middleware_error"  # the request middleware could not report a request
    NO_SCOPE = "no_scope"  # track_performance() outside a request and without a tenant scope


class BadRowReason(StrEnum):
    UNDECODABLE = "undecodable"  # not a record of a known schema version (worker, sink)
    INVALID_EVENT = "invalid_event"  # a product event catalog.check() rejects (worker, sink)
    TOO_LATE = "too_late"  # older than TALLY_ALLOWED_LATENESS_HOURS (worker)
    NO_SALT = "no_salt"  # no salt for its period: never hashed unsalted (worker)
    INVALID_AGGREGATE = "invalid_aggregate"  # a window total with an unknown kind or a negative count (sink)
    INVALID_DROP = "invalid_drop"  # a drop count below zero (sink)
    INVALID_SESSION = "invalid_session"  # a session record with a negative count (sink)
    WAREHOUSE_REFUSED = "warehouse_refused"  # decoded, but ClickHouse refused its rows after bounded retries (sink)


class EventProblem(StrEnum):
    """What catalog.check() finds wrong with a product event."""

    UNKNOWN_EVENT = "unknown_event"  # name not in the catalog
    DRAFT_EVENT = "draft_event"  # in the catalog as a draft: defined, not live yet
    WRONG_FEATURE_AREA = "wrong_feature_area"  # feature_area differs from the catalog's
    MISSING_FIELD = "missing_field"  # tenant_id/workspace_id/occurred_at or a required key absent
    UNKNOWN_KEY = "unknown_key"  # metadata key the event does not declare
    BAD_TYPE = "bad_type"  # value of the wrong type (e.g. a string for a boolean)
    BAD_VALUE = "bad_value"  # right type, outside the declared range or enum
    UNSAFE_VALUE = "unsafe_value"  # free text, email, URL, token or nested blob


class Component(StrEnum):
    """The stage that dropped or rejected something (`component` of drop_count and bad_row)."""

    COLLECTOR = "collector"
    WORKER = "worker"
    SINK = "sink"
    SDK = "sdk"
