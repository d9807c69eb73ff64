"""The event catalog: the one code-owned, bounded list of product events.

Every product event is named `resource.action`, belongs to one feature area and
declares the metadata keys it may carry, each with a *safe* kind: an opaque id,
an enum with its values, a boolean, a timestamp, a small integer, a canonical
type string, a route template, a money amount (integer minor units, with the
event's `currency` enum) or a bounded list of enum values. Anything else is
unsafe and rejected: free text, email addresses, URLs with query strings,
tokens, nested blobs and keys the catalog does not declare.

The envelope keys (ENVELOPE: `request_id`, `success`, `duration_ms`) are allowed
on every event. They and the new kinds travel inside the `metadata` map's
existing value types (a list as one canonical string, an amount as a long), so
the product_event schema is unchanged and every version stays FULL-compatible.

Each event has a lifecycle status (LIFECYCLE): a draft is rejected (not yet
live), a deprecated event is accepted but the SDK warns once and counts it.

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
from datetime import date, datetime, timedelta
from functools import cached_property
from typing import Any

from tally.schemas.reasons import EventProblem
from tally.schemas.sensitive import sensitive

from tally.caches import bounded_add
from tally.clock import epoch_ms

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


_MAX_MONEY = 10**15  # minor units: well within a long, far above any invoice


@dataclass(frozen=True)
class Prop:
    """One metadata key an event may carry."""

    kind: str                        # id | enum | bool | timestamp | int | type | route | money | enum_list
    doc: str
    values: tuple[str, ...] = ()     # enum and enum_list values
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
            "money": f"money: integer minor units 0..{self.max} (currency in `currency`)",
            "enum_list": "list of " + ", ".join(f"`{v}`" for v in self.values)
                         + " (sorted, comma-joined)",
        }[self.kind]
        return label + (" or null" if self.nullable else "")


# Seed 004's event lifecycle. draft: defined, not yet emitted (check() rejects it);
# active: emitted; monitoring: emitted and watched on dashboards; review: due for a
# usefulness review; deprecated: still accepted, the SDK warns once and counts it, and
# `replaced_by` names its successor.
LIFECYCLE = ("draft", "active", "monitoring", "review", "deprecated")


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
    status: str = "active"            # one of LIFECYCLE
    replaced_by: str = ""             # the successor of a deprecated event

    @cached_property
    def required(self) -> tuple[str, ...]:
        return tuple(k for k, p in self.props.items() if p.required)

    def __post_init__(self) -> None:
        resource, dot, action = self.name.partition(".")
        if not dot or not _TYPE.fullmatch(resource) or not _TYPE.fullmatch(action):
            raise ValueError(f"event name {self.name!r} is not resource.action (snake_case)")
        if self.status not in LIFECYCLE:
            raise ValueError(f"{self.name}: status {self.status!r} is not one of {LIFECYCLE}")
        if (self.status == "deprecated") != bool(self.replaced_by):
            raise ValueError(f"{self.name}: a deprecated event names its replaced_by, and only it does")
        for key, prop in self.props.items():
            if prop.kind in ("enum", "enum_list") and not prop.values:
                raise ValueError(f"{self.name}.{key}: an enum needs its values")
            if prop.kind == "enum_list" and (tuple(sorted(set(prop.values))) != prop.values
                                             or any("," in v for v in prop.values)):
                raise ValueError(f"{self.name}.{key}: list values are declared sorted, unique, without commas")
            if key in ENVELOPE and self.props[key] is not ENVELOPE[key]:
                raise ValueError(f"{self.name}.{key}: an envelope key, allowed on every event already")
        if any(p.kind == "money" for p in self.props.values()):
            currency = self.props.get("currency")
            if currency is None or currency.kind != "enum" or not currency.required:
                raise ValueError(f"{self.name}: an event with an amount requires a `currency` enum")
        # The envelope keys are part of every event's declared keys (one dict, so the
        # validator and the SDK's fast path treat them like any other key).
        object.__setattr__(self, "props", {**self.props, **ENVELOPE})

    @property
    def own_props(self) -> dict[str, Prop]:
        """The event's own keys, without the envelope's."""
        return {k: p for k, p in self.props.items() if k not in ENVELOPE}


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


def _money(doc: str, **kw: Any) -> Prop:
    return Prop("money", doc, max=_MAX_MONEY, **kw)


def _list(doc: str, values: tuple[str, ...], **kw: Any) -> Prop:
    return Prop("enum_list", doc, values=tuple(sorted(values)), **kw)


# ISO 4217 codes an amount may be in. Amounts are minor units as the currency defines
# them (cents for EUR and USD, yen for JPY).
CURRENCIES = _e("AUD", "BRL", "CAD", "CHF", "CNY", "CZK", "DKK", "EUR", "GBP", "HKD", "INR", "JPY",
                "MXN", "NOK", "NZD", "PLN", "SEK", "SGD", "USD", "ZAR")


def _currency() -> Prop:
    return _enum("ISO 4217 currency of the amounts.", CURRENCIES, required=True)


# Seed 004's common properties, allowed on every event (the envelope). request_id is
# filled by the SDK from the request middleware's context when the caller gives none.
ENVELOPE: dict[str, Prop] = {
    "request_id": Prop("id", "Request the event was emitted in, for tracing; the SDK fills it "
                             "from the request middleware's context."),
    "success": Prop("bool", "Outcome of the operation the event reports."),
    "duration_ms": Prop("int", "Duration of the timed operation, in milliseconds.", max=7 * 86_400_000),
}

DURATION_BUCKETS = _e("<1s", "1s-2s", "2s-5s", "5s-10s", "10s+")
# Upper bounds of the request rollup's cumulative latency histogram (p95 per route is
# read from it: the smallest bound holding 95% of the count).
LATENCY_BUCKETS_MS = (50, 100, 250, 500, 1000, 2000, 5000)
TICKET_FIELDS = _e("assignee", "board", "category", "contact", "description", "due_date", "priority",
                   "status", "tags", "title")
PROJECT_FIELDS = _e("billable", "budget", "client", "code", "description", "hourly_rate", "name", "status")
CLIENT_FIELDS = _e("address", "billing_info", "contact", "default_rate", "name", "status")
TASK_PRIORITIES = _e("low", "medium", "high", "urgent")
TASK_STATUSES = _e("todo", "in_progress", "review", "done", "cancelled")
ROLES = _e("admin", "manager", "user", "viewer")
SETTINGS = _e("allow_self_register", "backup_schedule", "company_info", "currency", "date_format",
              "idle_timeout", "invoice_defaults", "rounding_minutes", "single_active_timer", "telemetry",
              "timezone")
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
           "created_via": _enum("How it was created.", _e("web_app", "email", "api", "asset")),
           "category_id": _id("Category of the ticket.", nullable=True),
           "subcategory_id": _id("Subcategory of the ticket.", nullable=True)},
          subject_type="ticket", source="seed 001"),
    Event("ticket.resolved", "ticket",
          "A ticket was closed as resolved.",
          "When the ticket status changes to closed.",
          {"priority_id": _id("Priority of the ticket."),
           "time_to_resolution_minutes": _int("Minutes from creation to resolution.", max=10_000_000),
           "was_assigned": _bool("Whether it was assigned when resolved."),
           "category_id": _id("Category of the ticket.", nullable=True)},
          subject_type="ticket", source="seed 001"),
    Event("ticket.updated", "ticket",
          "Fields of a ticket were modified.",
          "After the ticket update is saved (which fields changed, never their values).",
          {"fields_changed": _list("Fields that changed.", TICKET_FIELDS, required=True),
           "status_changed": _bool("Whether the status changed."),
           "assignment_changed": _bool("Whether the assignee changed."),
           "priority_id": _id("Priority after the update.")},
          subject_type="ticket", source="seed 001"),
    Event("ticket.assigned", "ticket",
          "A ticket was assigned or reassigned.",
          "After the assignment is saved.",
          {"reassigned": _bool("True when it had an assignee before.", required=True),
           "minutes_to_first_assignment": _int("Minutes from creation to the first assignment; "
                                               "absent on reassignments.", max=10_000_000),
           "assignee_type": _enum("Who it was assigned to.", _e("user", "team"))},
          subject_type="ticket", source="seed 001"),
    Event("ticket.deleted", "ticket",
          "A ticket was deleted.",
          "After the ticket is deleted.",
          {"age_days": _int("Days since the ticket was created.", max=36_500),
           "was_resolved": _bool("Whether it was resolved when deleted.")},
          subject_type="ticket", source="seed 001"),
    Event("ticket.searched", "ticket",
          "Tickets were searched.",
          "After the search returned (the query text is never sent, only its length).",
          {"query_length": _int("Characters in the search query.", max=1000, required=True),
           "search_fields": _list("Fields searched.", _e("comments", "company", "contact", "description",
                                                          "ticket_number", "title")),
           "filters": _list("Filters applied.", _e("assignee", "board", "category", "client", "date_range",
                                                   "priority", "status", "tag")),
           "result_count": _int("Tickets found.", max=10_000_000, required=True)},
          source="seed 001"),
    Event("ticket.comment_added", "ticket",
          "A comment was added to a ticket.",
          "After the comment is saved (never its text).",
          {"visibility": _enum("Internal note or visible to the client.", _e("internal", "external"),
                               required=True),
           "is_resolution": _bool("Whether the comment resolved the ticket.")},
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
    Event("auth.logged_out", "auth",
          "A user logged out.",
          "When the user explicitly logs out (seed 004's `auth.logout`).",
          {"user_type": _enum("Kind of user.", _e("internal", "client"))},
          source="seed 001"),
    Event("auth.validated", "auth",
          "Credentials were validated (before a session exists, e.g. an API or SSO check).",
          "After a successful credential validation.",
          {"provider": _enum("Identity provider used.", _e("credentials", "google", "keycloak", "microsoft", "saml")),
           "user_type": _enum("Kind of user.", _e("internal", "client"))},
          source="seed 001"),
    Event("user.signed_up", "user",
          "A new user registered.",
          "After the user account is created.",
          {"method": _enum("How the user registered.",
                           _e("credentials", "google", "keycloak", "microsoft", "saml", "invitation"), required=True),
           "user_type": _enum("Kind of user.", _e("internal", "client")),
           "company_created": _bool("Whether a new company was created with the account.")},
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
    Event("timer.idle_detected", "timer",
          "A timer was stopped automatically because the user was idle.",
          "When the idle timeout expires and the timer is auto-stopped.",
          {"time_entry_id": _id("Time entry created."),
           "idle_minutes": _int("Minutes of idle time detected.", max=525_600, required=True),
           "duration_seconds": _int("Total duration of the entry in seconds.", max=31_536_000)},
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
    Event("project.updated", "project",
          "Project details were modified.",
          "After the project update is saved (which fields changed, never their values).",
          {"fields_changed": _list("Fields that changed.", PROJECT_FIELDS, required=True)},
          subject_type="project", source="seed 004"),
    Event("project.deleted", "project",
          "A project was deleted.",
          "After the project is deleted.",
          {"had_time_entries": _bool("Whether it had time entries.")},
          subject_type="project", source="seed 004"),
    Event("project.archived", "project",
          "A project was archived.",
          "After the project is archived.",
          {}, subject_type="project", source="seed 004"),
    Event("task.created", "task",
          "A task was created.",
          "After the task is saved.",
          {"project_id": _id("Project of the task.", required=True),
           "priority": _enum("Task priority.", TASK_PRIORITIES),
           "has_due_date": _bool("Whether the task has a due date.")},
          subject_type="task", source="seed 004"),
    Event("task.updated", "task",
          "Task details were modified.",
          "After the task update is saved.",
          {"status_changed": _bool("Whether the status changed."),
           "assignee_changed": _bool("Whether the assignee changed.")},
          subject_type="task", source="seed 004"),
    Event("task.status_changed", "task",
          "A task moved between statuses (e.g. todo to in_progress).",
          "When the task is moved between statuses or board columns.",
          {"old_status": _enum("Status before.", TASK_STATUSES, required=True),
           "new_status": _enum("Status after.", TASK_STATUSES, required=True)},
          subject_type="task", source="seed 004"),
    Event("export.csv", "export",
          "Data was exported to CSV.",
          "After the CSV file is produced.",
          {"export_type": _enum("What was exported.", _e("time_entries", "projects", "tasks", "invoices",
                                                         "clients"), required=True),
           "num_rows": _int("Rows exported.", max=100_000_000)},
          source="seed 004"),
    Event("export.pdf", "export",
          "A report was exported to PDF.",
          "After the PDF is produced.",
          {"report_type": _enum("Type of report.", _e("summary", "detailed", "project", "invoice"), required=True),
           "num_pages": _int("Pages in the PDF.", max=100_000)},
          source="seed 004"),
    Event("invoice.created", "invoice",
          "An invoice was created.",
          "After the invoice is saved.",
          {"client_id": _id("Client invoiced."),
           "total_amount": _money("Invoice total.", required=True),
           "currency": _currency(),
           "num_line_items": _int("Line items on the invoice.", max=100_000)},
          subject_type="invoice", source="seed 004"),
    Event("invoice.sent", "invoice",
          "An invoice was marked as sent.",
          "When the invoice status changes to sent.",
          {}, subject_type="invoice", source="seed 004"),
    Event("invoice.paid", "invoice",
          "An invoice was marked as paid.",
          "When the invoice status changes to paid.",
          {"amount": _money("Payment amount.", required=True),
           "currency": _currency(),
           "partial": _bool("Whether the payment covers only part of the total.")},
          subject_type="invoice", source="seed 004"),
    Event("client.created", "client",
          "A client was created.",
          "After the client is saved.",
          {"has_billing_info": _bool("Whether billing information was given.")},
          subject_type="client", source="seed 004"),
    Event("client.updated", "client",
          "Client details were modified.",
          "After the client update is saved (which fields changed, never their values).",
          {"fields_changed": _list("Fields that changed.", CLIENT_FIELDS)},
          subject_type="client", source="seed 004"),
    Event("admin.user_created", "admin",
          "An administrator created a user.",
          "After the user account is created by an admin (the subject is the new user).",
          {"role": _enum("Role assigned.", ROLES, required=True)},
          subject_type="user", source="seed 004"),
    Event("admin.user_role_changed", "admin",
          "An administrator changed a user's role.",
          "After the role change is saved (the subject is the affected user).",
          {"old_role": _enum("Role before.", ROLES, required=True),
           "new_role": _enum("Role after.", ROLES, required=True)},
          subject_type="user", source="seed 004"),
    Event("admin.settings_updated", "admin",
          "An administrator changed application settings.",
          "After the settings are saved (which settings, never their values).",
          {"settings_changed": _list("Settings that changed.", SETTINGS, required=True)},
          source="seed 004"),
    Event("system.backup_created", "system",
          "A backup was created.",
          "After a manual or scheduled backup completes.",
          {"backup_type": _enum("Manual or scheduled.", _e("manual", "scheduled"), required=True),
           "size_bytes": _int("Size of the backup file in bytes.", max=10**15)},
          source="seed 004"),
    Event("system.error", "system",
          "An unhandled error occurred.",
          "When an unhandled error reaches the app's error handler (never the message).",
          {"error_type": _type("Exception class, lower snake case (e.g. value_error).", required=True),
           "route": Prop("route", "Route template where it occurred; `/*` outside a request.")},
          source="seed 004"),
    # --- seed 001: service performance (tally.producers.sdk.performance) ---------
    # Seed 001's `slow_operation`/`operation_error`, renamed: feature area `operation`
    # is seed 003's "Operations started" family and must count user-started runs only.
    Event("service_operation.slow", "service_operation",
          "A service operation took longer than its threshold (500 ms by default).",
          "By track_performance() when the operation finished successfully but slowly.",
          {"operation": _type("Canonical operation name, e.g. search_tickets.", required=True),
           "threshold_ms": _int("Threshold that was exceeded, in milliseconds.", max=3_600_000, required=True),
           "duration_bucket": _enum("Duration bucket.", DURATION_BUCKETS, required=True)},
          source="seed 001"),
    Event("service_operation.failed", "service_operation",
          "A service operation raised an exception.",
          "By track_performance() when the operation raised (the exception is re-raised).",
          {"operation": _type("Canonical operation name, e.g. search_tickets.", required=True),
           "error_type": _type("Exception class, lower snake case (e.g. value_error).", required=True)},
          source="seed 001"),
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
    Event("api.request_rollup", "api",
          "The API requests of one route and method in one minute, summarised (seed 001's "
          "per-request `api_request`, bounded: one event per route, method and minute).",
          "By the request-performance middleware when a minute ends (at the next request after it, "
          "or at flush), for each route and method that had requests.",
          {"route": _route(), "method": _enum("HTTP method.", METHODS, required=True),
           "minute": _ts("Start of the minute (UTC).", required=True),
           "count": _int("Requests.", max=100_000_000, required=True),
           "errors": _int("Requests that ended in a 5xx or an exception.", max=100_000_000, required=True),
           "client_errors": _int("Requests answered 4xx.", max=100_000_000),
           "duration_sum_ms": _int("Sum of the durations, in ms (mean = sum / count).", max=10**13),
           "duration_max_ms": _int("Longest request, in ms.", max=86_400_000),
           **{f"le_{b}ms": _int(f"Requests that took at most {b} ms (cumulative histogram).", max=100_000_000)
              for b in LATENCY_BUCKETS_MS}},
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
    ("2026-11-30", "Seeds 001 and 004 in full: ticket updates, assignment, deletion, search and comments; "
                   "logout, validation and sign-up; projects, tasks, exports, invoices, clients, admin and "
                   "system events; service_operation.slow/failed and api.request_rollup; the envelope keys "
                   "request_id, success and duration_ms; money and enum-list kinds; lifecycle statuses."),
)

# Catalog health (seed 004): who owns the catalog, when it last changed, how often each
# event's usefulness is reviewed (`tally catalog lint` flags events past it).
OWNER = "Product & Engineering"
LAST_UPDATED = CHANGELOG[-1][0]
REVIEW_CYCLE_DAYS = 91  # quarterly

# Every event of seeds 001 and 004, and what became of it: (seed, seed name, catalog
# name or "" when excluded, why renamed or excluded). docs/events.md lists it.
SEED_MAP: tuple[tuple[str, str, str, str], ...] = (
    ("001", "ticket_created", "ticket.created", "resource.action naming; categories as opaque ids"),
    ("001", "ticket_updated", "ticket.updated", "the names of the changed fields as an enum list, never values"),
    ("001", "ticket_resolved", "ticket.resolved", ""),
    ("001", "ticket_assigned", "ticket.assigned", ""),
    ("001", "ticket_deleted", "ticket.deleted", ""),
    ("001", "ticket_searched", "ticket.searched", "the query's length, never its text; duration in duration_ms"),
    ("001", "ticket_comment_added", "ticket.comment_added", "never the comment's text"),
    ("001", "user_logged_in", "auth.login_succeeded", "one auth resource for seeds 001 and 004"),
    ("001", "user_logged_out", "auth.logged_out", ""),
    ("001", "user_signed_up", "user.signed_up", ""),
    ("001", "login_failed", "auth.login_failed", "never the attempted username; OAuth failures are "
                                                  "failure_reason oauth_error"),
    ("001", "auth_validated", "auth.validated", ""),
    ("001", "api_request", "api.request_rollup", "one event per route, method and minute (count, errors, "
                                                 "latency histogram) so volume stays bounded"),
    ("001", "slow_query", "api.request_very_slow", "a request over 2 s"),
    ("001", "api_error", "api.request_failed", ""),
    ("001", "slow_operation", "service_operation.slow", "feature area `operation` is seed 003's adoption family"),
    ("001", "operation_error", "service_operation.failed", "as above"),
    ("004", "auth.login", "auth.login_succeeded", "auth_method local/oidc is the provider enum"),
    ("004", "auth.logout", "auth.logged_out", ""),
    ("004", "auth.login_failed", "auth.login_failed", "no username"),
    ("004", "project.created", "project.created", "never the project name; has_client is client_id"),
    ("004", "project.updated", "project.updated", ""),
    ("004", "project.deleted", "project.deleted", ""),
    ("004", "project.archived", "project.archived", ""),
    ("004", "timer.started", "timer.started", "never the description (has_description instead)"),
    ("004", "timer.stopped", "timer.stopped", ""),
    ("004", "timer.idle_detected", "timer.idle_detected", ""),
    ("004", "task.created", "task.created", ""),
    ("004", "task.updated", "task.updated", ""),
    ("004", "task.status_changed", "task.status_changed", ""),
    ("004", "report.generated", "time_report.generated", "feature area `report` is seed 003's stored reports"),
    ("004", "export.csv", "export.csv", ""),
    ("004", "export.pdf", "export.pdf", ""),
    ("004", "invoice.created", "invoice.created", "total as money (minor units plus currency)"),
    ("004", "invoice.sent", "invoice.sent", ""),
    ("004", "invoice.paid", "invoice.paid", "amount as money (minor units plus currency)"),
    ("004", "client.created", "client.created", ""),
    ("004", "client.updated", "client.updated", ""),
    ("004", "admin.user_created", "admin.user_created", "the new user is the subject, the admin the actor"),
    ("004", "admin.user_role_changed", "admin.user_role_changed", "the affected user is the subject"),
    ("004", "admin.settings_updated", "admin.settings_updated", "setting names as an enum list, never values"),
    ("004", "system.backup_created", "system.backup_created", ""),
    ("004", "system.error", "system.error", "the error class and route template; never the message or raw "
                                            "endpoint (free text)"),
    ("004", "user_id, admin_user_id", "", "excluded as metadata: the actor (actor_id) carries who acted"),
    ("004", "timestamp", "", "excluded as metadata: occurred_at on every event"),
    ("004", "username, project_name, description, error_message", "",
     "excluded: free text or personal data"),
)

if len(CATALOG) != len(_EVENTS):
    raise RuntimeError("duplicate event name in the catalog")
for _ev in _EVENTS:
    if _ev.replaced_by and (_ev.replaced_by not in CATALOG or CATALOG[_ev.replaced_by].status == "deprecated"):
        raise RuntimeError(f"{_ev.name}: replaced_by must name a live catalog event")
if any(name and name not in CATALOG for _, _, name, _ in SEED_MAP):
    raise RuntimeError("SEED_MAP names an event that is not in the catalog")
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
    if kind == "int" or kind == "timestamp" or kind == "money":
        if value is True or value is False or not isinstance(value, int):
            if isinstance(value, str) and len(value) > 64 or isinstance(value, str) and _EMAIL.search(value):
                return EventProblem.UNSAFE_VALUE, f"{where} {_why_unsafe(value)}"
            return EventProblem.BAD_TYPE, f"{where} must be an integer" + (" (epoch ms)" if kind == "timestamp" else "")
        if kind != "timestamp":
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
    if kind == "enum_list":
        return _check_list(where, prop, value)
    if kind == "id":
        if is_safe_id(value):
            return None
    elif kind == "type":
        if _TYPE.fullmatch(value) and sensitive(value) is None:
            return None
    elif kind == "route" and is_safe_route(value):
        return None
    return EventProblem.UNSAFE_VALUE, f"{where} {_why_unsafe(value)}; expected {prop.type_label()}"


def _check_list(where: str, prop: Prop, value: str) -> tuple[EventProblem, str] | None:
    """An enum_list travels as one string: its values sorted, unique, comma-joined
    ("" is the empty list), so equal lists are equal strings in the warehouse."""
    if not value:
        return None
    items = value.split(",")
    unknown = [v for v in items if v not in prop.values]
    if unknown:
        v = unknown[0]
        if len(v) > 64 or _EMAIL.search(v) or _URL.search(v) or " " in v:
            return EventProblem.UNSAFE_VALUE, f"{where} {_why_unsafe(v)}"
        return EventProblem.BAD_VALUE, f"{where}: {v!r} is not one of {', '.join(prop.values)}"
    if items != sorted(set(items)):
        return EventProblem.BAD_VALUE, f"{where} must be sorted and unique, got {value!r}"
    return None


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
                               "type": str, "route": str, "money": int, "enum_list": str}


def canonical_list(prop: Prop, value: Any) -> Any:
    """A list, tuple or set given for an enum_list key, as the canonical string check()
    accepts: sorted, unique, comma-joined. Anything else is returned unchanged."""
    if (prop.kind == "enum_list" and isinstance(value, (list, tuple, set, frozenset))
            and all(isinstance(v, str) for v in value)):
        return ",".join(sorted(set(value)))
    return value


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
    ms = epoch_ms(occurred)
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
    if spec.status == "draft":
        return EventProblem.DRAFT_EVENT, f"event {name!r} is a draft: make it active in the catalog to emit it"
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


# --- catalog lint --------------------------------------------------------------------

# Key names that say "personal data or free text": the catalog carries safe kinds only,
# and a key named like this invites the wrong value even when its kind is safe.
_UNSAFE_KEY_NAMES = frozenset({"email", "user_email", "name", "username", "user_name", "full_name",
                               "first_name", "last_name", "title", "description", "note", "notes", "comment",
                               "message", "error_message", "query", "search_query", "url", "ip", "ip_address",
                               "phone", "address_line", "password", "token", "user_id", "admin_user_id"})


@dataclass(frozen=True)
class Finding:
    level: str  # error | warning
    event: str  # "" for the catalog as a whole
    message: str


def lint(today: date) -> list[Finding]:
    """The catalog's rules beyond what import enforces: errors (unsafe key names, missing
    docs) and warnings (a review due, events in review, deprecated or draft, seed events
    missing from the seed map)."""
    out: list[Finding] = []
    for e in _EVENTS:
        spec = CATALOG.get(e.name, e)
        if not spec.doc.strip() or not spec.fires.strip():
            out.append(Finding("error", e.name, "needs what it means (doc) and when it fires"))
        for key in spec.own_props:
            if key in _UNSAFE_KEY_NAMES:
                out.append(Finding("error", e.name, f"key {key!r} names personal data or free text; "
                                                    "carry a boolean, a count or an opaque id instead"))
        if spec.status == "review":
            out.append(Finding("warning", e.name, "in review: decide to keep it (active) or deprecate it"))
        elif spec.status == "deprecated":
            out.append(Finding("warning", e.name, f"deprecated, replaced by {spec.replaced_by}"))
        elif spec.status == "draft":
            out.append(Finding("warning", e.name, "draft: rejected until made active"))
    mapped = {name for _, _, name, _ in SEED_MAP}
    for e in _EVENTS:
        if e.source in ("seed 001", "seed 004") and e.name not in mapped and not e.name.startswith("api."):
            out.append(Finding("warning", e.name, f"from {e.source} but not in SEED_MAP"))
    due = date.fromisoformat(LAST_UPDATED) + timedelta(days=REVIEW_CYCLE_DAYS)
    if today > due:
        out.append(Finding("warning", "", f"the catalog's review was due on {due} (last updated {LAST_UPDATED}, "
                                          f"review cycle {REVIEW_CYCLE_DAYS} days)"))
    return out


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
        "integers, canonical type strings, route templates, money amounts and lists of enum",
        "values. Free text, email addresses, URLs with query strings, tokens, nested blobs and",
        "undeclared keys are rejected, and the rejection names the event and the key.",
        "",
        "Every event also carries (schema `product_event`): `event_id` (UUIDv7), `tenant_id` and",
        "`workspace_id` (never empty), `actor_type` (user, service or system) and an opaque",
        "`actor_id`, `subject_type` and `subject_id`, `occurred_at` and the publishing `app`.",
        "",
        "This file is generated by `tally catalog docs`; a test fails when it is stale.",
        "",
        "## Catalog health",
        "",
        f"- **Owner:** {OWNER}",
        f"- **Last updated:** {LAST_UPDATED}",
        f"- **Review cycle:** every {REVIEW_CYCLE_DAYS} days (quarterly); `tally catalog lint` flags",
        "  events in `review` and checks the catalog's rules; `tally catalog report` shows each",
        "  event's volume, last sighting and rejections, and the events that never fired.",
        "",
        "Each event has a lifecycle status: " + ", ".join(f"`{x}`" for x in LIFECYCLE) + ".",
        "A `draft` is rejected (`draft_event`) until it is made active; `monitoring` and `review`",
        "events are accepted like active ones; a `deprecated` event is still accepted, but the SDK",
        "logs a warning the first time it is tracked, counts it (`Stats.deprecated`), and the",
        "event names its replacement.",
        "",
        "## Envelope",
        "",
        "These metadata keys are allowed on every event, in addition to the event's own:",
        "",
        "| key | type | meaning |",
        "| --- | --- | --- |",
        *[f"| `{k}` | {p.type_label()} | {p.doc} |" for k, p in ENVELOPE.items()],
        "",
        "## Kinds carried in the metadata map",
        "",
        "Metadata values are null, boolean, long or string in the Avro schema, and the new kinds",
        "travel within those types, so the schema stays FULL-compatible:",
        "",
        "- **money**: a long of minor units (cents; yen for JPY); the event's required `currency`",
        "  key holds the ISO 4217 code. Summable in the warehouse:",
        "  `sum(toInt64(metadata['total_amount']))` grouped by `metadata['currency']`.",
        "- **list of enum values**: one string, the values sorted, unique and comma-joined",
        "  (`\"name,status\"`; `\"\"` is the empty list). The SDK accepts a list, tuple or set and",
        "  writes the canonical string. In the warehouse:",
        "  `has(splitByChar(',', metadata['fields_changed']), 'status')`.",
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
                       + (" · **Actor:** a user (user-initiated only)" if e.user_initiated else "")
                       + f" · **Status:** {e.status}"
                       + (f" (replaced by `{e.replaced_by}`)" if e.replaced_by else ""))
            out.append("")
            if not e.own_props:
                out.append("No metadata of its own (the envelope keys only).")
                continue
            out += ["| key | type | required | meaning |", "| --- | --- | --- | --- |"]
            for key, p in e.own_props.items():
                out.append(f"| `{key}` | {p.type_label()} | {'yes' if p.required else 'no'} | {p.doc} |")
    out += ["", "## Seeds 001 and 004, event by event", "",
            "| seed | seed's name | catalog event | note |", "| --- | --- | --- | --- |"]
    for seed, seed_name, name, note in SEED_MAP:
        if not name:
            verdict = "excluded"
        elif seed_name.replace("_", ".", 1) == name or seed_name == name:
            verdict = f"`{name}`"
        else:
            verdict = f"`{name}` (renamed)"
        out.append(f"| {seed} | `{seed_name}` | {verdict} | {note} |")
    out += ["", "## Reject reasons", "", "`check()` and the SDK's drop counters use this closed set: "
            + ", ".join(f"`{r}`" for r in EventProblem) + ".", "", "## Changelog", ""]
    for day, change in CHANGELOG:
        out.append(f"- {day}: {change}")
    return "\n".join(out) + "\n"
