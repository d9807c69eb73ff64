"""A product event's bytes from cached, already-judged pieces: the SDK's track().

Why: the SDK's target is 100k events/s from one Python process, so track()
has a budget of a few µs. Building a record dict, running check() over it and
encoding it field by field costs several times that. But almost everything in
an event repeats: the event name, tenants, workspaces, actors, subjects and
metadata pairs. So each piece, once the catalog has accepted it, is kept with
its Avro encoding; an event made only of known pieces is validated and encoded
by dictionary look-ups and one join. Anything else (a new value, an odd type,
an explicit occurred_at, datetimes in metadata) returns None and takes the
full path (record, catalog.check(), codec), which judges it, and whose success
teaches the caches through learn().

Why judging pieces separately gives check()'s verdict: check()'s rules are
each about one piece, given the event:
- tenant_id and workspace_id: a non-empty opaque id (the same rule for both,
  and for actor and subject ids). Cached: strings check() accepted there.
- the actor: its type is user/service/system and its id opaque or empty; the
  five adoption events need a user with an id. Cached apart: `users` (a user
  with an id, good for every event) and `actors` (anything else check()
  accepted, consulted only for events that are not user-initiated).
- the subject: its type is the event's (or empty) and its id opaque or None.
  Cached per event.
- each metadata pair: the key is declared by the event and the value fits its
  kind. Cached per event and key, by value *and class* (True == 1 in a dict,
  so a bool never hits an int's entry, nor 1.0 an int's). Enum values,
  booleans and null for nullable keys are filled in from the catalog up front.
- required metadata keys: checked per event on every call.
- feature_area and app come from the catalog and the client; occurred_at is
  "now" (an explicit occurred_at takes the full path).

Byte-identity: the pieces are made by the same compiled writers as the codec
(tally.schemas.avro_writer), in schema field order, and the layout (schemas/layouts.py) is checked
against the newest product_event schema at start (a schema change without a
matching change here turns the fast path off rather than write wrong bytes).
tests/test_schemas_avro_writer.py compares the result with fastavro's bytes.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from typing import Any

from tally.producers.sdk.context import current, with_request_id
from tally.schemas.avro_writer import Fallback, compile_writer, encoded, field_writers
from tally.schemas.catalog import (
    ACTOR_TYPES,
    CATALOG,
    KIND_CLASS,
    canonical_list,
    check_metadata_value,
    is_safe_id,
)
from tally.schemas.codec import MAGIC, Codec
from tally.schemas.layouts import PRODUCT_EVENT

from tally.caches import bounded_put
from tally.ids import tail_pool, uuid7_prefix, uuid7_tail

SCHEMA = "product_event"
# Cache bounds: a full cache is emptied and refills with what recurs. Worst case
# a few tens of MB in all; a typical app (tens of tenants, enum metadata) far less.
_CACHE_MAX = 16384   # ids, users, other actors
_SUBJECTS_MAX = 4096  # subjects per event (ids of reports, tickets... often unique)
_VALUES_MAX = 1024   # values per metadata key (enums are few; ints and ids may be many)
_UUID_LEN = b"\x48"  # Avro length prefix of a 36-character uuid string
_MAP_END = b"\x00"
_MAP_COUNT = tuple(bytes((2 * n,)) for n in range(64))  # zigzag varint of a small count


class Unavailable(Exception):
    """The codec cannot take the fast path (schema registry, or another layout)."""


# --- the pieces --------------------------------------------------------------------------

class _BoolPiece(bytes):
    """The encoded pair of a boolean key: good for a bool value only (1 == True in a dict)."""


class _IntPiece(bytes):
    """The encoded pair of an integer key: good for an int value only (not True, not 1.0)."""


# A number's piece is found by equality, so its class says which value class it needs.
_PIECE_VALUE_CLASS: dict[type, type] = {_BoolPiece: bool, _IntPiece: int}
_PIECE_OF_CLASS: dict[type, type] = {bool: _BoolPiece, int: _IntPiece, str: bytes}
_LIST_CLASSES = frozenset({list, tuple, set, frozenset})  # an enum_list's value as the caller may give it


class _Plan:
    """One catalog event: its constant bytes and the caches of its own pieces."""

    __slots__ = ("subjects", "pieces", "kinds", "learnable", "fast")

    def __init__(self, head: bytes, required: tuple[str, ...], user_initiated: bool) -> None:
        self.subjects: dict[Any, bytes] = {}  # subject (None or (type, id)) -> its two fields
        # metadata key -> {value: key + value bytes}. Pieces of str values are plain
        # bytes; of numbers, _BoolPiece/_IntPiece (see track()).
        self.pieces: dict[str, dict[Any, bytes]] = {}
        self.kinds: dict[str, type] = {}  # metadata key -> class of its values
        self.learnable: set[str] = set()  # keys whose values repeat (timestamps do not)
        # What track() reads, as one tuple: head is event + feature_area.
        self.fast = (head, required, user_initiated, self.subjects.get, self.pieces)


class EventPieces:
    """Product-event bytes from cached pieces; see the module docstring."""

    def __init__(self, codec: Codec, app: str) -> None:
        if codec.registry_url:
            raise Unavailable("Confluent wire format: the serializer writes the header")
        schema = codec.latest(SCHEMA)
        if not PRODUCT_EVENT.matches(schema.raw):
            raise Unavailable(f"{schema.path.name} has another layout than schemas/layouts.py's")
        try:
            w = field_writers(schema.parsed)
        except Fallback:
            raise Unavailable("a product_event field needs fastavro") from None
        self._string = w["event"]
        self._subject_id = w["subject_id"]
        self._timestamp = w["occurred_at"]
        [meta] = [f for f in schema.parsed["fields"] if f["name"] == "metadata"]
        self._value = compile_writer(meta["type"]["values"])  # one map value (a union)
        self._header = MAGIC + schema.fingerprint + _UUID_LEN
        self._app = encoded(self._string, app)
        self.ids: dict[str, bytes] = {}
        self.users: dict[Any, bytes] = {}
        self.actors: dict[Any, bytes] = {}
        # No actor is the system, with no id: fine for events that are not user-initiated.
        self.actors[None] = self._enc("system") + self._enc("")
        self._no_subject = self._enc("") + encoded(self._subject_id, None)
        self.plans: dict[str, _Plan] = {}
        self.fast_plans: dict[str, tuple] = {}  # event -> _Plan.fast; emptied at close()
        for name, spec in CATALOG.items():
            plan = _Plan(self._enc(name) + self._enc(spec.feature_area), tuple(spec.required),
                         spec.user_initiated)
            plan.subjects[None] = self._no_subject  # no subject: fine for every event
            for key, prop in spec.props.items():
                plan.kinds[key] = KIND_CLASS[prop.kind]
                known = plan.pieces[key] = {}
                if prop.kind != "timestamp" and key != "request_id":  # these rarely repeat
                    plan.learnable.add(key)
                for v in (*prop.values, True, False, None):
                    if check_metadata_value(name, key, v) is None:  # the catalog's own verdict
                        known[v] = self._piece(key, v)
            self.plans[name] = plan
            if spec.status not in ("draft", "deprecated"):  # the full path rejects or counts these
                self.fast_plans[name] = plan.fast

    def close(self) -> None:
        """From now on every event goes to the full path."""
        self.fast_plans.clear()

    def _enc(self, s: str) -> bytes:
        return encoded(self._string, s)

    def _piece(self, key: str, value: Any) -> bytes:
        """A metadata pair's bytes, typed by the value's class (None and str: plain bytes)."""
        return _PIECE_OF_CLASS.get(value.__class__, bytes)(self._enc(key) + encoded(self._value, value))

    def clock_at(self, ns: int) -> tuple[int, bytes, bytes]:
        """(end of this ms in ns, header + uuid prefix, occurred_at + app) for a clock reading."""
        ms = ns // 1_000_000
        return ((ms + 1) * 1_000_000, self._header + uuid7_prefix(ms).encode(),
                encoded(self._timestamp, ms) + self._app)

    def compile_track(self, produce: Callable[[str, bytes, str], None], topic: str,
                      queued: Callable[[], object], when_full: Callable[[bytes, str], Any],
                      failed: Callable[[Exception], bool], full: Callable[..., Any]) -> Callable[..., Any]:
        """The SDK's track() over these caches: see compile_track()."""
        return compile_track(self, produce, topic, queued, when_full, failed, full)

    # --- pieces seen for the first time: the catalog's rule for that piece alone ---------

    def new_id(self, value: Any) -> bytes | None:
        """A tenant or workspace id: check() requires a non-empty opaque id."""
        if value.__class__ is not str or not is_safe_id(value):
            return None
        b = self._enc(value)
        bounded_put(self.ids, value, b, _CACHE_MAX)
        return b

    def new_actor(self, actor: Any, user_only: bool) -> bytes | None:
        """A user id (str) or an (actor_type, actor_id) pair; user_only: the event is
        user-initiated, so only a user with an id will do."""
        if actor.__class__ is str:
            kind, actor_id = "user", actor
        elif actor is None:
            kind, actor_id = "system", ""
        elif _plain_key(actor) and actor[1] is not None:
            kind, actor_id = actor
        else:
            return None
        if kind not in ACTOR_TYPES or (actor_id and not is_safe_id(actor_id)):
            return None
        b = self._enc(kind) + self._enc(actor_id)
        if kind == "user" and actor_id:
            bounded_put(self.users, actor, b, _CACHE_MAX)
            return b
        bounded_put(self.actors, actor, b, _CACHE_MAX)
        return None if user_only else b

    def new_subject(self, event: str, subject: Any) -> bytes | None:
        """(subject_type, subject_id): the event's subject type (or empty), an opaque id or None."""
        if subject is None:
            subject_type, subject_id = "", None
        elif not _plain_key(subject) or subject.__class__ is str:
            return None
        else:
            subject_type, subject_id = subject
        if subject_type and subject_type != CATALOG[event].subject_type:
            return None
        if subject_id and not is_safe_id(subject_id):
            return None
        b = self._enc(subject_type) + encoded(self._subject_id, subject_id)
        bounded_put(self.plans[event].subjects, subject, b, _SUBJECTS_MAX)
        return b

    def new_piece(self, event: str, key: str, value: Any) -> bytes | None:
        """A metadata pair: a declared key, and a value check() accepts for it."""
        if value.__class__ in _LIST_CLASSES:
            return self._list_piece(event, key, value)
        if value.__class__ not in _PIECE_OF_CLASS or check_metadata_value(event, key, value) is not None:
            return None
        b = self._piece(key, value)
        plan = self.plans[event]
        if key in plan.learnable:
            bounded_put(plan.pieces[key], value, b, _VALUES_MAX)
        return b

    def list_piece(self, event: str, key: str, value: Any) -> bytes | None:
        """A list or set given for an enum-list key: found by its items (as a tuple or a
        frozenset), else judged like a new one."""
        try:
            b = self.plans[event].pieces[key].get(tuple(value) if value.__class__ is list else frozenset(value))
        except (KeyError, TypeError):  # an undeclared key, or unhashable items
            return None
        return b if b is not None else self._list_piece(event, key, value)

    def _list_piece(self, event: str, key: str, value: Any) -> bytes | None:
        """A list of enum values given as a list, tuple or set: the piece of its canonical
        string, as the full path sends it (record.py), kept under its items (a tuple for a
        list, a frozenset for a set) so the next equal list is one look-up."""
        prop = CATALOG[event].props.get(key)
        if prop is None or prop.kind != "enum_list":
            return None
        canonical = canonical_list(prop, value)
        if canonical.__class__ is not str or check_metadata_value(event, key, canonical) is not None:
            return None
        b = self._piece(key, canonical)
        held = tuple(value) if value.__class__ is list else frozenset(value) if value.__class__ is set else value
        bounded_put(self.plans[event].pieces[key], held, b, _VALUES_MAX)
        return b

    def learn(self, record: Mapping[str, Any], actor: Any, subject: Any) -> None:
        """Keep the pieces of a record check() accepted, keyed as track() got them."""
        plan = self.plans.get(record["event"])
        if plan is None or record["event"] not in self.fast_plans:
            return
        enc = self._enc
        for field in ("tenant_id", "workspace_id"):
            v = record[field]
            if v.__class__ is str and v not in self.ids:
                bounded_put(self.ids, v, enc(v), _CACHE_MAX)
        actor_type, actor_id = record["actor_type"], record["actor_id"]
        if _plain_key(actor) and actor_type.__class__ is str and actor_id.__class__ is str:
            cache = self.users if actor_type == "user" and actor_id else self.actors
            bounded_put(cache, actor, enc(actor_type) + enc(actor_id), _CACHE_MAX)
        subject_type, subject_id = record["subject_type"], record["subject_id"]
        if _plain_key(subject) and subject_type.__class__ is str:
            bounded_put(plan.subjects, subject, enc(subject_type) + encoded(self._subject_id, subject_id), _SUBJECTS_MAX)
        for k, v in record["metadata"].items():
            if k in plan.learnable and v.__class__ is plan.kinds[k]:
                known = plan.pieces[k]
                if v not in known:
                    bounded_put(known, v, self._piece(k, v), _VALUES_MAX)


def compile_track(pieces: EventPieces, produce: Callable[[str, bytes, str], None], topic: str,
                  queued: Callable[[], object], when_full: Callable[[bytes, str], Any],
                  failed: Callable[[Exception], bool], full: Callable[..., Any]) -> Callable[..., Any]:
    """The SDK's track() as one closure over the caches (this runs per event).

    An event made of known pieces is encoded here and handed to
    produce(topic, value, tenant_id); then queued() counts it. A full queue
    (BufferError) returns when_full(value, tenant_id); another produce error
    returns failed(exc). Every other event returns full(event, tenant_id,
    workspace_id, actor, subject, metadata, occurred_at). Clearing
    `pieces.fast_plans` (close()) sends everything to full().
    """
    plans_get, ids_get, users_get, actors_get = (
        pieces.fast_plans.get, pieces.ids.get, pieces.users.get, pieces.actors.get)
    time_ns, pop, refill, clock_at = time.time_ns, tail_pool.pop, uuid7_tail, pieces.clock_at
    new_id, new_actor, new_subject, new_piece, list_pieces = (
        pieces.new_id, pieces.new_actor, pieces.new_subject, pieces.new_piece, pieces.list_piece)
    counts, map_end, join, piece_value_class = _MAP_COUNT, _MAP_END, b"".join, _PIECE_VALUE_CLASS
    clock = (0, b"", b"")
    in_request = current

    def with_metadata(event: str, pieces: dict, required: tuple[str, ...], metadata: dict,
                      parts: list[bytes]) -> bytes | None:
        """parts, then the metadata pairs' pieces and the map's end, joined; None when a
        pair is not known (and not acceptable alone) or a required key is missing."""
        append = parts.append
        for k, v in metadata.items():
            try:
                b = pieces[k][v]
            except KeyError:  # an undeclared key, or a value not seen yet
                b = new_piece(event, k, v)
                if b is None:
                    return None
            except TypeError:  # unhashable: a list or set for an enum-list key, kept by its items
                b = list_pieces(event, k, v)
                if b is None:
                    return None
            else:  # 1 found True's piece, or True found 1's: new_piece says no
                if b.__class__ is not bytes and v.__class__ is not piece_value_class[b.__class__]:
                    return None
            append(b)
        for k in required:
            if k not in metadata:
                return None
        append(map_end)
        return join(parts)

    def track(event: str, *, tenant_id: str, workspace_id: str, actor: Any = None,
              subject: Any = None, metadata: Any = None, occurred_at: Any = None) -> Any:
        nonlocal clock
        if in_request() is not None:  # inside a request: the event carries its request_id
            metadata = with_request_id(metadata)
        plan = plans_get(event)
        value = None
        if plan is not None and occurred_at is None:
            try:  # no verdict here: a miss or anything odd goes to full()
                head, required, user_only, subjects_get, pieces = plan
                # A piece not seen yet is judged alone by the catalog's rule for it
                # (new_*: None when the rule says no, and full() then names why).
                t = ids_get(tenant_id) or new_id(tenant_id)
                w = ids_get(workspace_id) or new_id(workspace_id)
                a = users_get(actor)
                if a is None:
                    a = (None if user_only else actors_get(actor)) or new_actor(actor, user_only)
                s = subjects_get(subject) or new_subject(event, subject)
                if t and w and a and s:  # pieces are never empty bytes
                    now = time_ns()
                    if now >= clock[0]:
                        clock = clock_at(now)
                    try:
                        tail = pop()
                    except IndexError:
                        tail = refill()
                    if not metadata:
                        if not required and (metadata is None or metadata.__class__ is dict):
                            value = join((clock[1], tail, head, t, w, a, s, clock[2], map_end))
                    elif metadata.__class__ is dict:
                        value = with_metadata(event, pieces, required, metadata, [
                            clock[1], tail, head, t, w, a, s, clock[2], counts[len(metadata)]])
            except Exception:
                value = None
        if value is None:
            return full(event, tenant_id, workspace_id, actor, subject, metadata, occurred_at)
        try:
            produce(topic, value, tenant_id)
        except BufferError:
            return when_full(value, tenant_id)
        except Exception as exc:  # KafkaException after a fatal producer error
            return failed(exc)
        queued()
        return True

    return track


def _plain_key(x: Any) -> bool:
    """None, a str, or a pair of str/None: safe and cheap to hash as a cache key."""
    if x is None or x.__class__ is str:
        return True
    return (isinstance(x, tuple) and len(x) == 2 and x[0].__class__ is str
            and (x[1] is None or x[1].__class__ is str))
