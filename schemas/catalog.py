"""The event catalog: the one code-owned, bounded list of product events.

Every product event is named `resource.action`, belongs to one feature area and
declares the metadata keys it may carry, each with a *safe* kind: an opaque id,
an enum with its values, a boolean, a timestamp, a small integer, a canonical
type string or a route template. Anything else is unsafe and rejected: free
text, email addresses, URLs with query strings, tokens, nested blobs and keys
the catalog does not declare.

`check(record)` is the single validator. The SDK calls it before an event
leaves the application and the stream worker calls it again on the decoded
`product_event` record (defence in depth). It returns None for a valid record,
else `(problem, detail)`: problem is a `EventProblem` (schemas/reasons.py), detail names the
event and the key. It never raises.

Adding an event: add an `Event(...)` below, run `tally catalog docs` (which
regenerates docs/events.md; a test fails when it is stale) and add a line to
CHANGELOG at the bottom of this file.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from typing import Any

from tally.schemas.reasons import EventProblem
from tally.schemas.sensitive import sensitive

from tally.caches import bounded_add

ACTOR_TYPES = ("user", "service", "system")

# An opaque id: UUIDs, numeric ids, prefixed ids like tkt_01H... No spaces, no
# '@', no '/', no '?', so emails, URLs and prose cannot pass as ids.
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# A canonical type string such as entra_admin_roles or permission.posture.
_TYPE = re.compile(r"[a-z][a-z0-9_]{0,47}(?:\.[a-z][a-z0-9_]{0,47}){0,3}")
# A route template as a framework's router declares it: /tickets/{ticket_id}.
_ROUTE = re.compile(r"/[A-Za-z0-9_{}<>:.*/-]{0,199}")
_EMAIL = re.compile(r"[^\s@]+@[^\s@]+\.[^\s@]+")
_TOKEN = re.compile(r"(?:eyJ[\w-]{8,}\.[\w-]{8,}\.|(?:sk|pk|rk|ghp|gho|xox[bap]|AKIA)[_-]?[A-Za-z0-9]{12,})")
_URL = re.compile(r"(?:[a-z][a-z0-9+.-]*://|www\.)", re.IGNORECASE)
# The publishing application's name (TALLY_SDK_APP): a short label, or empty.
_APP = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
# occurred_at may differ from the checker's clock by this much either way when a clock is
# given (the worker passes TALLY_ALLOWED_LATENESS_HOURS; this is its default): an event
# stamped in 2099 would outlive every TTL.
DEFAULT_WINDOW_MS = 48 * 3_600_000

# Timestamps in metadata are epoch milliseconds (as the SDK normalises
# datetimes); the range rejects seconds-vs-millis mix-ups and garbage.
_TS_MIN = 946_684_800_000      # 2000-01-01
_TS_MAX = 4_102_444_800_000    # 2100-01-01


@dataclass(frozen=True)
class Prop:
    """One metadata key an event may carry."""

    kind: str                        # id | enum | bool | timestamp | int | type | route
    doc: str
    values: tuple[str, ...] = ()     # enum values
    max: int = 1_000_000             # upper bound for int (lower bound is 0)
    required: bool = False
    nullable: bool = False

    def type_label(self) -> str:
        label = {
            "id": "id (opaque string)",
            "enum": "enum: " + ", ".join(f"`{v}`" for v in self.values),
            "bool": "boolean",
            "timestamp": "timestamp (epoch ms)",
            "int": f"integer 0..{self.max}",
            "type": "canonical type string",
            "route": "route template",
        }[self.kind]
        return label + (" or null" if self.nullable else "")


@dataclass(frozen=True)
class Event:
    name: str
    feature_area: str
    doc: str                          # what it means
    fires: str                        # when it fires
    props: Mapping[str, Prop] = field(default_factory=dict)
    subject_type: str = ""            # the subject type it refers to, "" when none
    source: str = ""                  # which seed example it comes from
    # Seed 003: adoption telemetry records user-initiated actions only; scheduled
    # or initiator-less system actions are not adoption.
    user_initiated: bool = False

    @cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(k for k, p in self.props.items() if p.required)

    def __post_init__(self) -> None:
        resource, dot, action = self.name.partition(".")
        if not dot or not _TYPE.fullmatch(resource) or not _TYPE.fullmatch(action):
            raise ValueError(f"event name {self.name!r} is not resource.action (snake_case)")
        for key, prop in self.props.items():
            if prop.kind == "enum" and not prop.values:
                raise ValueError(f"{self.name}.{key}: an enum needs its values")


def _e(*values: str) -> tuple[str, ...]:
    return values


def _id(doc: str, **kw: Any) -> Prop:
    return Prop("id", doc, **kw)


def _enum(doc: str, values: tuple[str, ...], **kw: Any) -> Prop:
    return Prop("enum", doc, values=values, **kw)


def _bool(doc: str, **kw: Any) -> Prop:
    return Prop("bool", doc, **kw)


def _int(doc: str, max: int = 1_000_000, **kw: Any) -> Prop:
    return Prop("int", doc, max=max, **kw)


def _ts(doc: str, **kw: Any) -> Prop:
    return Prop("timestamp", doc, **kw)


def _type(doc: str, **kw: Any) -> Prop:
    return Prop("type", doc, **kw)


def _route() -> Prop:
    return Prop("route", "Route template as the router declares it, e.g. `/tickets/{ticket_id}` "
                "(never the raw URL or query string); `/*` when no route matched.", required=True)


DURATION_BUCKETS = _e("<1s", "1s-2s", "2s-5s", "5s-10s", "10s+")
STATUS_CLASSES = _e("1xx", "2xx", "3xx", "4xx", "5xx")
METHODS = _e("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "OTHER")

_EVENTS: tuple[Event, ...] = (
    # --- seed 003: the five adoption families --------------------------------
    Event("onboarding.checkpoint_completed", "onboarding",
          "An onboarding checkpoint of an already linked tenant was completed.",
          "After the checkpoint transition succeeds (never on page render, never for pre-tenant drafts).",
          {"checkpoint": _enum("Which checkpoint was completed.",
                               _e("connection_verified", "permissions_granted", "initial_sync_completed",
                                  "baseline_captured", "readiness_confirmed"), required=True),
           "step_index": _int("1-based position of the checkpoint in the flow.", max=50),
           "resumed": _bool("True when the flow was resumed from an earlier session.")},
          subject_type="onboarding_session", source="seed 003", user_initiated=True),
    Event("support.diagnostics_opened", "support",
          "A user explicitly opened the support diagnostics of a tenant.",
          "On the explicit open action that succeeded (not on a Livewire re-render).",
          {"entry_point": _enum("Where diagnostics were opened from.",
                                _e("tenant_dashboard", "operation_detail"), required=True),
           "operation_run_id": _id("Operation run the diagnostics were opened for, if any.", nullable=True)},
          subject_type="tenant", source="seed 003", user_initiated=True),
    Event("operation.started", "operation",
          "A user started a tenant-bound operation.",
          "After the operation run is created by a user action (scheduled/system runs are not adoption).",
          {"operation_type": _type("Canonical operation type, e.g. policy_sync or backup_restore.", required=True),
           "dry_run": _bool("True for a preview run that changes nothing.")},
          subject_type="operation_run", source="seed 003", user_initiated=True),
    Event("report.created", "report",
          "A stored report was created.",
          "After the stored report is persisted.",
          {"report_type": _type("Canonical report type, e.g. entra_admin_roles or permission_posture.", required=True),
           "format": _enum("Storage format of the report.", _e("json", "pdf", "csv", "html")),
           "finding_count": _int("Number of findings in the report.", max=1_000_000)},
          subject_type="stored_report", source="seed 003", user_initiated=True),
    Event("review_pack.requested", "review_pack",
          "A user requested generation of a review pack.",
          "After the generation request is accepted (queued), not when it completes.",
          {"include_pii": _bool("Whether the pack was requested with personal data included."),
           "section_count": _int("Number of sections requested.", max=100),
           "source": _enum("Where it was requested from.", _e("tenant_dashboard", "review_list", "api"))},
          subject_type="review_pack", source="seed 003", user_initiated=True),
    # --- seeds 001 and 004: a handful of everyday product events --------------
    Event("ticket.created", "ticket",
          "A new ticket was created.",
          "After the ticket is saved.",
          {"ticket_type": _type("Canonical ticket type.", required=True),
           "priority_id": _id("Priority of the ticket."),
           "has_description": _bool("Whether a description was given (never the text itself)."),
           "assigned": _bool("Whether it was assigned on creation."),
           "created_via": _enum("How it was created.", _e("web_app", "email", "api", "asset"))},
          subject_type="ticket", source="seed 001"),
    Event("ticket.resolved", "ticket",
          "A ticket was closed as resolved.",
          "When the ticket status changes to closed.",
          {"priority_id": _id("Priority of the ticket."),
           "time_to_resolution_minutes": _int("Minutes from creation to resolution.", max=10_000_000),
           "was_assigned": _bool("Whether it was assigned when resolved.")},
          subject_type="ticket", source="seed 001"),
    Event("auth.login_succeeded", "auth",
          "A user logged in.",
          "After the credentials were validated and the session created.",
          {"provider": _enum("Identity provider used.", _e("credentials", "google", "keycloak", "microsoft", "saml")),
           "user_type": _enum("Kind of user.", _e("internal", "client")),
           "two_factor": _bool("Whether a second factor was used.")},
          source="seed 001"),
    Event("auth.login_failed", "auth",
          "A login attempt failed.",
          "When the login is rejected (never carries the attempted username or email).",
          {"provider": _enum("Identity provider used.", _e("credentials", "google", "keycloak", "microsoft", "saml")),
           "failure_reason": _enum("Why it failed.", _e("invalid_password", "inactive_account", "locked",
                                                         "unknown_user", "oauth_error"), required=True)},
          source="seed 001"),
    Event("timer.started", "timer",
          "A time-tracking timer was started.",
          "When the user starts a new timer (the description is free text and is never sent).",
          {"project_id": _id("Project being tracked.", required=True),
           "task_id": _id("Associated task, if any.", nullable=True),
           "has_description": _bool("Whether the timer has a description.")},
          subject_type="timer", source="seed 004"),
    Event("timer.stopped", "timer",
          "A time-tracking timer was stopped.",
          "When the user stops an active timer.",
          {"project_id": _id("Project tracked.", required=True),
           "time_entry_id": _id("Time entry created."),
           "task_id": _id("Associated task, if any.", nullable=True),
           "duration_seconds": _int("Duration in seconds.", max=31_536_000),
           "started_at": _ts("When the timer was started.")},
          subject_type="timer", source="seed 004"),
    # seed 004's `report.generated`, renamed: feature area `report` is seed 003's
    # "Stored reports" family and must count stored reports only.
    Event("time_report.generated", "time_report",
          "A user generated a time-tracking report.",
          "When the user generates any time report (seed 004's `report.generated`).",
          {"report_type": _enum("Type of report.", _e("summary", "detailed", "project"), required=True),
           "date_range_days": _int("Days covered.", max=3660),
           "format": _enum("Export format.", _e("html", "pdf", "csv")),
           "num_entries": _int("Time entries in the report.", max=10_000_000)},
          subject_type="time_report", source="seed 004"),
    Event("project.created", "project",
          "A project was created.",
          "After the project is saved.",
          {"client_id": _id("Client of the project.", nullable=True),
           "billable": _bool("Whether the project is billable.")},
          subject_type="project", source="seed 004"),
    # --- seed 001: API performance (emitted by tally.producers.sdk.middleware) -----
    Event("api.request_slow", "api",
          "An API request took longer than 1 s.",
          "By the request-performance middleware when a request took over 1 s "
          "(requests over 2 s also emit api.request_very_slow).",
          {"route": _route(), "method": _enum("HTTP method.", METHODS, required=True),
           "status_class": _enum("Status class of the response.", STATUS_CLASSES, required=True),
           "duration_bucket": _enum("Duration bucket.", DURATION_BUCKETS, required=True)},
          source="seed 001"),
    Event("api.request_very_slow", "api",
          "An API request took longer than 2 s (seed 001's separate slow-query threshold).",
          "By the request-performance middleware when a request took over 2 s, in addition to "
          "api.request_slow.",
          {"route": _route(), "method": _enum("HTTP method.", METHODS, required=True),
           "status_class": _enum("Status class of the response.", STATUS_CLASSES, required=True),
           "duration_bucket": _enum("Duration bucket.", DURATION_BUCKETS, required=True)},
          source="seed 001"),
    Event("api.request_failed", "api",
          "An API request ended in a server error (5xx or an unhandled exception).",
          "By the request-performance middleware on a 5xx response or an exception.",
          {"route": _route(), "method": _enum("HTTP method.", METHODS, required=True),
           "status_class": _enum("Status class of the response.", STATUS_CLASSES, required=True),
           "duration_bucket": _enum("Duration bucket; `<1s` for fast failures.",
                                    DURATION_BUCKETS, required=True),
           "error_type": _type("Exception class name, lower snake case (e.g. value_error); "
                               "`http_5xx` when the app returned the error itself.", required=True)},
          source="seed 001"),
)

CATALOG: dict[str, Event] = {e.name: e for e in _EVENTS}

# Seed 003's five adoption families, in dashboard order.
FAMILIES: tuple[str, ...] = ("onboarding", "support", "operation", "report", "review_pack")

FAMILY_LABELS: dict[str, str] = {
    "onboarding": "Onboarding checkpoints",
    "support": "Support diagnostics",
    "operation": "Operations started",
    "report": "Stored reports",
    "review_pack": "Review packs requested",
}

CHANGELOG: tuple[tuple[str, str], ...] = (
    ("2026-11-22", "Initial catalog: seed 003's five adoption families, tickets, auth, timers, reports, "
                   "projects, and the API performance events of the request middleware."),
)

if len(CATALOG) != len(_EVENTS):
    raise RuntimeError("duplicate event name in the catalog")
_FAMILY_EVENTS = ("onboarding.checkpoint_completed", "support.diagnostics_opened", "operation.started",
                  "report.created", "review_pack.requested")
if tuple(CATALOG[n].feature_area for n in _FAMILY_EVENTS) != FAMILIES:
    raise RuntimeError("FAMILIES must be the feature areas of seed 003's five events, in order")
if sorted(e.name for e in _EVENTS if e.feature_area in FAMILIES) != sorted(_FAMILY_EVENTS):
    raise RuntimeError("each adoption family holds exactly one seed 003 event")


# --- validation ------------------------------------------------------------------

def _why_unsafe(value: str) -> str:
    """Say what a string that failed its kind looks like, for the reject message."""
    if _EMAIL.search(value):
        return "looks like an email address"
    if _URL.search(value):
        return "is a URL with a query string" if "?" in value else "is a URL"
    if _TOKEN.search(value):
        return "looks like a token or secret"
    found = sensitive(value)
    if found is not None:
        return f"looks like personal data or a secret ({found})"
    if len(value) > 64:
        return f"is free text ({len(value)} chars)"
    if any(c.isspace() for c in value):
        return "is free text (contains spaces)"
    return "is not a safe value"


def _check_value(event: str, key: str, prop: Prop, value: Any) -> tuple[EventProblem, str] | None:
    where = f"{event}: metadata key {key!r}"
    if value is None:
        return None if prop.nullable else (EventProblem.BAD_TYPE, f"{where} may not be null")
    kind = prop.kind
    if isinstance(value, (dict, list, tuple, set, bytes, bytearray)):
        return EventProblem.UNSAFE_VALUE, f"{where} is a nested blob ({type(value).__name__}); only scalar values are allowed"
    if kind == "bool":
        return None if value is True or value is False else (EventProblem.BAD_TYPE, f"{where} must be a boolean")
    if kind == "int" or kind == "timestamp":
        if value is True or value is False or not isinstance(value, int):
            if isinstance(value, str) and len(value) > 64 or isinstance(value, str) and _EMAIL.search(value):
                return EventProblem.UNSAFE_VALUE, f"{where} {_why_unsafe(value)}"
            return EventProblem.BAD_TYPE, f"{where} must be an integer" + (" (epoch ms)" if kind == "timestamp" else "")
        if kind == "int":
            if 0 <= value <= prop.max:
                return None
            return EventProblem.BAD_VALUE, f"{where} must be within 0..{prop.max}, got {value}"
        if _TS_MIN <= value <= _TS_MAX:
            return None
        return EventProblem.BAD_VALUE, f"{where} must be epoch milliseconds between 2000 and 2100, got {value}"
    if not isinstance(value, str):
        return EventProblem.BAD_TYPE, f"{where} must be a string, got {type(value).__name__}"
    if kind == "enum":
        if value in prop.values:
            return None
        if len(value) > 64 or _EMAIL.search(value) or _URL.search(value) or " " in value or sensitive(value):
            return EventProblem.UNSAFE_VALUE, f"{where} {_why_unsafe(value)}"
        return EventProblem.BAD_VALUE, f"{where} must be one of {', '.join(prop.values)}, got {value!r}"
    if kind == "id":
        if is_safe_id(value):
            return None
    elif kind == "type":
        if _TYPE.fullmatch(value) and sensitive(value) is None:
            return None
    elif kind == "route" and is_safe_route(value):
        return None
    return EventProblem.UNSAFE_VALUE, f"{where} {_why_unsafe(value)}; expected {prop.type_label()}"


def is_safe_id(value: str) -> bool:
    """check()'s rule for a non-empty tenant, workspace, actor or subject id: an opaque id
    that is no secret, JWT, card number, IBAN, IP literal or phone number."""
    return _ID.fullmatch(value) is not None and not _TOKEN.match(value) and sensitive(value) is None


def is_safe_route(value: str) -> bool:
    """A route template none of whose segments is personal data or a secret."""
    return _ROUTE.fullmatch(value) is not None and not any(
        sensitive(seg) for seg in value.split("/") if seg and not seg.startswith(("{", "<", ":")))


def check_metadata_value(event: str, key: str, value: Any) -> tuple[EventProblem, str] | None:
    """check()'s verdict on one metadata value of a known event (None: allowed)."""
    prop = CATALOG[event].props.get(key)
    if prop is None:
        return EventProblem.UNKNOWN_KEY, f"{event}: metadata key {key!r} is not declared"
    return _check_value(event, key, prop, value)


# Python class a metadata value of each kind has (bool is not an int here).
KIND_CLASS: dict[str, type] = {"bool": bool, "int": int, "timestamp": int, "id": str, "enum": str,
                               "type": str, "route": str}


# Values already found safe, so repeated ids and enum values cost one set
# lookup (a track() call must stay within a few µs). Bounded: cleared when full.
_SAFE_IDS: set[str] = set()
_SAFE_VALUES: dict[str, dict[str, set[Any]]] = {}  # event -> key -> safe values
_SAFE_MAX = 65536


def _check_ref(event: str, field_name: str, value: Any, required: bool) -> tuple[EventProblem, str] | None:
    if value in _SAFE_IDS:
        return None
    if value is None or value == "":
        return (EventProblem.MISSING_FIELD, f"{event}: {field_name} is required") if required else None
    if not isinstance(value, str):
        return EventProblem.BAD_TYPE, f"{event}: {field_name} must be a string id"
    if is_safe_id(value):
        bounded_add(_SAFE_IDS, value, _SAFE_MAX)
        return None
    return EventProblem.UNSAFE_VALUE, f"{event}: {field_name} {_why_unsafe(value)}; expected an opaque id"


def check(record: Mapping[str, Any], now_ms: int | None = None,
          window_ms: int = DEFAULT_WINDOW_MS) -> tuple[EventProblem, str] | None:
    """None when the product event is valid, else (reason, detail).

    Works on what the SDK builds and on what the codec decodes (metadata values
    None/bool/int/str; occurred_at a datetime or epoch ms). With `now_ms`, occurred_at
    must lie within now ± window_ms. Never raises.
    """
    try:
        return _check(record) or check_occurred_at(record, now_ms, window_ms)
    except Exception as exc:  # e.g. an unhashable id: still a verdict, not a crash
        name = record.get("event") if isinstance(record, Mapping) else None
        return EventProblem.BAD_TYPE, f"{name if isinstance(name, str) else 'event'}: {type(exc).__name__}: {exc}"


def check_occurred_at(record: Mapping[str, Any], now_ms: int | None,
                      window_ms: int = DEFAULT_WINDOW_MS) -> tuple[EventProblem, str] | None:
    """check()'s bound on the occurred_at of a record check() accepted otherwise."""
    if now_ms is None:
        return None
    occurred = record["occurred_at"]
    ms = occurred if isinstance(occurred, int) else int(occurred.timestamp() * 1000)
    if abs(ms - now_ms) <= window_ms:
        return None
    return (EventProblem.BAD_VALUE, f"{record['event']}: occurred_at {ms} is more than "
            f"{window_ms // 3_600_000} h from now ({now_ms})")


def _check(record: Mapping[str, Any]) -> tuple[EventProblem, str] | None:
    name = record.get("event")
    spec = CATALOG.get(name) if isinstance(name, str) else None
    if spec is None:
        shown = name if isinstance(name, str) and len(name) <= 64 else f"<{type(name).__name__}>"
        return EventProblem.UNKNOWN_EVENT, f"event {shown!r} is not in the catalog (see docs/events.md)"
    fa = record.get("feature_area")
    if fa is not None and fa != spec.feature_area:
        return EventProblem.WRONG_FEATURE_AREA, f"{name}: feature_area must be {spec.feature_area!r}, got {fa!r}"
    safe = _SAFE_IDS
    get = record.get
    tenant_id, workspace_id, actor_id, subject_id = (
        get("tenant_id"), get("workspace_id"), get("actor_id"), get("subject_id"))
    if not (tenant_id in safe and workspace_id in safe):
        bad = (_check_ref(name, "tenant_id", tenant_id, True)
               or _check_ref(name, "workspace_id", workspace_id, True))
        if bad:
            return bad
    actor_type = get("actor_type", "user")
    if actor_type not in ACTOR_TYPES:
        return EventProblem.BAD_VALUE, f"{name}: actor_type must be one of {', '.join(ACTOR_TYPES)}, got {actor_type!r}"
    if not (actor_id in safe or not actor_id):
        bad = _check_ref(name, "actor_id", actor_id, False)
        if bad:
            return bad
    if spec.user_initiated and (actor_type != "user" or not actor_id):
        return (EventProblem.BAD_VALUE if actor_id else EventProblem.MISSING_FIELD,
                f"{name}: adoption events are user-initiated; actor must be a user with an id "
                f"(got actor_type {actor_type!r}, actor_id {actor_id!r})")
    subject_type = get("subject_type") or ""
    if subject_type and subject_type != spec.subject_type:
        expected = repr(spec.subject_type) if spec.subject_type else "empty (this event has no subject)"
        return EventProblem.BAD_VALUE, f"{name}: subject_type must be {expected}, got {subject_type!r}"
    if not (subject_id is None or subject_id in safe):
        bad = _check_ref(name, "subject_id", subject_id, False)
        if bad:
            return bad
    app = get("app")
    if app and not (isinstance(app, str) and _APP.fullmatch(app) and sensitive(app) is None):
        shown = app if isinstance(app, str) and len(app) <= 64 and sensitive(app) is None else "<redacted>"
        return EventProblem.UNSAFE_VALUE, f"{name}: app {shown!r} is not a short application name"
    occurred = record.get("occurred_at")
    if occurred is None:
        return EventProblem.MISSING_FIELD, f"{name}: occurred_at is required"
    if not isinstance(occurred, (datetime, int)) or occurred is True or occurred is False:
        return EventProblem.BAD_TYPE, f"{name}: occurred_at must be a datetime or epoch ms"
    metadata = record.get("metadata")
    if metadata is None:
        metadata = {}
    elif metadata.__class__ is not dict and not isinstance(metadata, Mapping):
        return EventProblem.BAD_TYPE, f"{name}: metadata must be a mapping of key to scalar value"
    props = spec.props
    memo = _SAFE_VALUES.get(name)
    if memo is None:
        memo = _SAFE_VALUES[name] = {}
    for key, value in metadata.items():
        # Only str/int values are memoised (True == 1 in a set); no tuple allocated.
        cls = value.__class__
        known = memo.get(key) if cls is str or cls is int else None
        if known is not None and value in known:
            continue
        prop = props.get(key) if isinstance(key, str) else None
        if prop is None:
            allowed = ", ".join(props) or "none"
            shown = key if isinstance(key, str) and len(key) <= 64 else f"<{len(str(key))} chars>"
            return EventProblem.UNKNOWN_KEY, f"{name}: metadata key {shown!r} is not declared (allowed: {allowed})"
        bad = _check_value(name, key, prop, value)
        if bad:
            return bad
        if cls is str or cls is int:
            if known is None:
                known = memo[key] = set()
            bounded_add(known, value, _SAFE_MAX)
    for key in spec.required:
        if key not in metadata:
            return EventProblem.MISSING_FIELD, f"{name}: metadata key {key!r} is required"
    return None


# --- docs/events.md ------------------------------------------------------------------

def events_markdown() -> str:
    """docs/events.md, generated from CATALOG (`tally catalog docs`)."""
    out = [
        "# Product events",
        "",
        "The code-owned catalog of product events (`schemas/catalog.py`). Applications publish",
        "them with the SDK (docs/sdk.md); the SDK and the stream worker both reject anything",
        "else. Names are `resource.action`. Metadata holds only the keys listed for each event,",
        "with safe values: opaque ids, enum values, booleans, timestamps (epoch ms), small",
        "integers, canonical type strings and route templates. Free text, email addresses,",
        "URLs with query strings, tokens, nested blobs and undeclared keys are rejected, and",
        "the rejection names the event and the key.",
        "",
        "Every event also carries (schema `product_event`): `event_id` (UUIDv7), `tenant_id` and",
        "`workspace_id` (never empty), `actor_type` (user, service or system) and an opaque",
        "`actor_id`, `subject_type` and `subject_id`, `occurred_at` and the publishing `app`.",
        "",
        "This file is generated by `tally catalog docs`; a test fails when it is stale.",
        "",
        "## Adoption families",
        "",
        "| family | dashboard label | events |",
        "| --- | --- | --- |",
    ]
    for fam in FAMILIES:
        names = ", ".join(f"`{e.name}`" for e in _EVENTS if e.feature_area == fam)
        out.append(f"| `{fam}` | {FAMILY_LABELS[fam]} | {names} |")
    areas: dict[str, list[Event]] = {}
    for e in _EVENTS:
        areas.setdefault(e.feature_area, []).append(e)
    for area, events in areas.items():
        out += ["", f"## Feature area `{area}`"]
        for e in events:
            out += ["", f"### `{e.name}`", "", e.doc, "", f"**Fires:** {e.fires}", ""]
            subject = f"`{e.subject_type}`" if e.subject_type else "none"
            out.append(f"**Subject type:** {subject}" + (f" · **From:** {e.source}" if e.source else "")
                       + (" · **Actor:** a user (user-initiated only)" if e.user_initiated else ""))
            out.append("")
            if not e.props:
                out.append("No metadata.")
                continue
            out += ["| key | type | required | meaning |", "| --- | --- | --- | --- |"]
            for key, p in e.props.items():
                out.append(f"| `{key}` | {p.type_label()} | {'yes' if p.required else 'no'} | {p.doc} |")
    out += ["", "## Reject reasons", "", "`check()` and the SDK's drop counters use this closed set: "
            + ", ".join(f"`{r}`" for r in EventProblem) + ".", "", "## Changelog", ""]
    for day, change in CHANGELOG:
        out.append(f"- {day}: {change}")
    return "\n".join(out) + "\n"
