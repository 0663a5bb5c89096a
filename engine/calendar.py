"""A calendar: one pycrdt document and a typed API over it.

Layout of the document (shared with stock Yjs clients and the browser board):

- ``reservations``: Map reservation id -> Map of fields (one key per field, so concurrent
  edits of different fields both survive; see :mod:`engine.model` for the three key groups);
- ``resources``: Map resource id -> Map (``name``, ``capacity``, opening ``hours`` and
  ``hours_exceptions``: :mod:`engine.slots`);
- ``meta``: calendar-level settings (``hold_ttl``, ``time_zone``);
- ``homes``: set-once home records (who decides bookings, from which epoch; signed);
- ``verdicts``: set-once signed decisions of the home (:mod:`engine.authority`);
- ``receipts``: set-once relay receipts, when a request first reached a relay (:mod:`engine.receipts`).

Reads summarise a reservation's genuine verdicts (signature checked against the calendar's
current home, cached) into a :class:`~engine.model.DecisionState` and derive its status from
that and the reservation's own facts.

Every write is one transaction tagged with the calendar's ``origin`` so that I/O layers can
tell local writes from applied remote updates. Reads return frozen dataclasses.
Nothing here does I/O or reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import builtins
import json
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from pycrdt import Doc, Map

from .authority import HomeRecord, Verdict, Verifier, home_chain, request_digest, reservation_of
from .errors import InvalidReservation, InvalidTransition, ReservationNotFound
from .model import (
    ALLOWED_FROM,
    UNDECIDED,
    WHY_REFUSED,
    Action,
    CalendarId,
    Decision,
    DecisionState,
    Reservation,
    Resource,
    Status,
    check_calendar_name,
    check_interval,
    check_resource_id,
    check_text,
    format_time,
    new_reservation_id,
    parse_time,
    reservation_from_fields,
)
from .slots import (
    EXCEPTIONS_KEY,
    HOURS_KEY,
    OpeningHours,
    format_exceptions,
    format_weekly,
    opening_hours,
    parse_exceptions,
    parse_weekly,
)

HOLD_TTL_KEY = "hold_ttl"
TIME_ZONE_KEY = "time_zone"
TIME_ZONE_NAME = re.compile(r"UTC|[A-Za-z][A-Za-z0-9_+-]*(/[A-Za-z0-9_+-]+){0,2}")
"""An IANA zone name's shape (``Europe/Berlin``, ``America/Argentina/Buenos_Aires``), at most 64 characters."""


def read_time_zone(value: object) -> str | None:
    """A stored time zone setting, None if unset or not shaped like a zone name."""
    if isinstance(value, str) and len(value) <= 64 and TIME_ZONE_NAME.fullmatch(value):
        return value
    return None
MIN_HOLD_TTL, MAX_HOLD_TTL = 60, 30 * 86400


def read_hold_ttl(value: object) -> timedelta | None:
    """A stored hold TTL (whole seconds, 60 to 30 days) as a duration; None for anything else."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        return None
    if not float(value).is_integer() or not MIN_HOLD_TTL <= value <= MAX_HOLD_TTL:
        return None
    return timedelta(seconds=int(value))


def read_capacity(value: object) -> int:
    """A stored capacity as the decider uses it: a whole number 1-1000; anything else a writer
    put there (``"x"``, ``1e9``, ``-3``) counts as 1, the safe reading, so that one bad value can
    neither overbook a resource nor stop decisions."""
    if isinstance(value, bool) or not isinstance(value, int | float) or value != value:  # NaN
        return 1
    whole = int(value) if value == int(value) else 0
    return whole if 1 <= whole <= 1000 else 1


READ_CACHE_MIN = 500
"""A calendar this large keeps its parsed reservations between whole-calendar reads (``list``,
``all_fields``), refreshed entry by entry from a deep observer: a read of 10,000 reservations then
costs what changed since the last one, not a Yrs ``to_json`` of the whole map (~0.3 s here).
Smaller calendars add no observer and read whole."""


@dataclass(slots=True)
class _ReadCache:
    fields: dict[str, dict[str, Any]]  # reservation id -> its fields as last read
    parsed: dict[str, Reservation | None] = field(default_factory=dict)  # None: does not read as a reservation
    dirty: set[str] = field(default_factory=set)  # ids whose entries changed since the last read
    listed: builtins.list[Reservation] | None = None  # every readable one, sorted; None: recompute
    decided: dict[str, DecisionState] = field(default_factory=dict)  # decision states of the kept fields


@dataclass(frozen=True, slots=True)
class ReadSnapshot:
    """A large calendar's reservations as text, with what reading them needs (see :meth:`Calendar.read_snapshot`)."""

    reservations: str  # the ``reservations`` map as JSON text
    home: HomeRecord | None
    has_home: bool
    verdicts: dict[str, builtins.list[tuple[str, str]]]  # reservation id -> its verdict entries
    state: bytes  # the document's state vector when taken


ParsedSnapshot = tuple[dict[str, dict[str, Any]], dict[str, Reservation | None], dict[str, DecisionState]]
"""What :meth:`Calendar.parse_snapshot` read: fields, readings and decision states by reservation id."""


def _decision_state(reservation_id: str, fields: dict[str, Any], home: HomeRecord,
                    entries: Iterable[tuple[str, str]] | None, verifier: Verifier) -> DecisionState:
    """:meth:`Calendar.decision_state` over given verdict entries (see the module docstring)."""
    if not entries:
        return UNDECIDED
    digest = request_digest(reservation_id, fields)
    current: tuple[int, str, Verdict] | None = None
    latest: tuple[int, str, Verdict] | None = None
    for key, text in entries:
        verdict = verifier.verify(key, text, home)
        if verdict is None:
            continue  # a forgery, another home's, or a copy: not a decision
        ranked = (verdict.seq, key, verdict)
        if verdict.request == digest and (current is None or ranked[:2] > current[:2]):
            current = ranked
        if latest is None or ranked[:2] > latest[:2]:
            latest = ranked
    if latest is None:
        return UNDECIDED
    last = latest[2]
    shown = current[2] if current is not None else last
    return DecisionState(
        current=Decision(current[2].outcome) if current is not None else None,
        booked=last.booked,
        released=last.outcome == Decision.RELEASED,
        reason=shown.reason,
        conflict_with=shown.conflict_with,
        decided_by=last.relay_id,
        seq=last.seq,
    )


class Calendar:
    """Typed access to one calendar document.

    Args:
        name: the calendar name (validated).
        doc: an existing document (e.g. held by a relay or terminal replica); a new one if None.
        actor: who writes (``created_by``/``updated_by``), e.g. ``"desk-1"``; at most 64 characters.
        origin: transaction origin for local writes; defaults to ``actor``.
        assume_home: treat the calendar as decided by a home relay even before ``meta.home`` is
            known here. A terminal sets it for a calendar it has never synced: until it hears
            from a relay it cannot tell a plain calendar from one whose home it has not learned,
            and must not show an undecided booking as booked.

    Raises:
        InvalidCalendarName: if ``name`` is not 1-128 characters of ``A-Za-z0-9._-/``.
    """

    def __init__(self, name: str, doc: Doc[Any] | None = None, *, actor: str = "local", origin: object = None,
                 assume_home: bool = False) -> None:
        self.name: CalendarId = check_calendar_name(name)
        self.doc: Doc[Any] = doc if doc is not None else Doc()
        self.actor = check_text("actor", actor, required=True)
        self.origin = origin if origin is not None else actor
        self._assume_home = assume_home
        self.reservations = self.doc.get("reservations", type=Map)
        self.resources_map = self.doc.get("resources", type=Map)
        self.meta = self.doc.get("meta", type=Map)
        self.homes = self.doc.get("homes", type=Map)
        self.verdicts = self.doc.get("verdicts", type=Map)
        self.receipts = self.doc.get("receipts", type=Map)
        self.verifier = Verifier(self.name)
        self._home: HomeRecord | None = None
        self._home_stale = True
        self._index: dict[str, list[tuple[str, str]]] | None = None  # reservation id -> its verdict entries
        self._subscriptions = [self.homes.observe(self._homes_changed), self.verdicts.observe(self._verdicts_changed)]
        self._reads: _ReadCache | None = None  # built by the first whole-calendar read of a large calendar

    @property
    def assume_home(self) -> bool:
        """Read as decided by a home relay even before a home record is here (see the constructor)."""
        return self._assume_home

    @assume_home.setter
    def assume_home(self, value: bool) -> None:
        self._assume_home = value
        self._forget_statuses()

    def _homes_changed(self, _event: object) -> None:
        before = None if self._home_stale else self._home
        self._home_stale = True
        if self._reads is not None and (before is None or not self._keeps_every_verdict_of(before)):
            self._forget_statuses()

    def _keeps_every_verdict_of(self, before: HomeRecord) -> bool:
        """True if the current home is the next epoch after ``before`` and adopts every verdict
        that counted under it (a relay cluster's takeover): every status reads as it did, so a
        large calendar keeps its reads."""
        chain = self.home_chain()
        if len(chain) < 2 or chain[-2] != before or chain[-1].adopts is None:
            return False
        verify = self.verifier.verify
        highest = max((verdict.serial for entries in self._verdict_index().values() for key, text in entries
                       if (verdict := verify(key, text, before)) is not None and verdict.epoch == before.epoch),
                      default=0)
        return chain[-1].adopts >= highest

    def _forget_statuses(self) -> None:
        if self._reads is not None:
            self._reads.parsed.clear()  # every status may read differently under another home
            self._reads.decided.clear()
            self._reads.listed = None

    def _verdicts_changed(self, event: Any) -> None:
        """Keep the verdict index in step (incrementally: a home decides one request at a time)."""
        reads = self._reads
        if reads is not None:
            for key in event.keys:
                rid = reservation_of(str(key))
                reads.parsed.pop(rid, None)
                reads.decided.pop(rid, None)
            reads.listed = None
        index = self._index
        if index is None:
            return
        for key, change in event.keys.items():
            rid = reservation_of(str(key))
            entries = [item for item in index.get(rid, []) if item[0] != key]
            value = change.get("newValue") if change.get("action") != "delete" else None
            if isinstance(value, str):
                entries.append((str(key), value))
            if entries:
                index[rid] = entries
            else:
                index.pop(rid, None)

    # ---- reads -----------------------------------------------------------------------------

    @property
    def has_home(self) -> bool:
        """True if a home relay decides bookings here (a home record is known, or assumed)."""
        return self.assume_home or self.home_record is not None

    @property
    def home_record(self) -> HomeRecord | None:
        """The current home (relay, key, epoch) from the calendar's home records, or None."""
        if self._home_stale:
            chain = self.home_chain()
            self._home = chain[-1] if chain else None
            self._home_stale = False
        return self._home

    def home_chain(self) -> builtins.list[HomeRecord]:
        """Every epoch's home, oldest first (the current one last; empty: no home)."""
        entries = json.loads(str(self.homes)) if len(self.homes) else {}
        return home_chain(self.name, entries.values())

    def unchecked_verdicts(self) -> builtins.list[tuple[str, str]]:
        """The verdict entries whose signatures this replica has not checked yet under the current
        home (empty without one). A caller with many may check them off the event loop:
        ``calendar.verifier.check_all`` in a thread, then ``remember``; reads then cost no signature check."""
        home = self.home_record
        if home is None:
            return []
        return self.verifier.unchecked((e for entries in self._verdict_index().values() for e in entries), home)

    def genuine_verdicts(self) -> builtins.list[tuple[str, Verdict]]:
        """``(text, verdict)`` of every verdict that counts under the current home (empty without
        one), of every reservation. Signatures are checked as reads check them (cached; see
        :meth:`unchecked_verdicts` to check many off the event loop first)."""
        home = self.home_record
        if home is None:
            return []
        verify = self.verifier.verify
        return [(text, verdict) for key, text in self.verdict_entries()
                if (verdict := verify(key, text, home)) is not None]

    def verdict_entries(self) -> builtins.list[tuple[str, str]]:
        """The ``(entry key, stored text)`` of every verdict entry, genuine or not."""
        return [entry for entries in self._verdict_index().values() for entry in entries]

    def verdicts_of(self, reservation_id: str) -> builtins.list[tuple[str, str]]:
        """The (entry key, stored text) of every verdict entry filed under the reservation."""
        return builtins.list(self._verdict_index().get(reservation_id, ()))

    @property
    def home(self) -> str | None:
        """The relay id that decides bookings for this calendar, or None (plain CRDT calendar)."""
        record = self.home_record
        return record.relay_id if record is not None else None

    def get(self, reservation_id: str) -> Reservation:
        """The reservation with this id.

        Raises:
            ReservationNotFound: if this replica has no such reservation (it may not have synced yet).
        """
        fields = self._fields(reservation_id)
        try:
            return reservation_from_fields(self.name, fields, has_home=self.has_home,
                                           decided=self.decision_state(reservation_id, fields))
        except (KeyError, InvalidReservation):  # a partly synced or hand-written entry: never crash a read
            raise ReservationNotFound(
                f"reservation {reservation_id!r} is only partly on this replica (a request field is missing or "
                "unreadable: still syncing, or written by a client that is not accord); sync and try again"
            ) from None

    def decision_state(self, reservation_id: str, fields: dict[str, Any]) -> DecisionState:
        """What the home has genuinely decided about this reservation (see module docstring)."""
        home = self.home_record
        if home is None:
            return UNDECIDED
        reads = self._reads  # a large calendar keeps each state until its entry or verdicts change
        kept = None
        if reads is not None and reservation_id not in reads.dirty and reads.fields.get(reservation_id) == fields:
            kept = reads.decided
            if reservation_id in kept:
                return kept[reservation_id]
        state = _decision_state(reservation_id, fields, home, self._verdict_index().get(reservation_id), self.verifier)
        if kept is not None:
            kept[reservation_id] = state
        return state

    @property
    def first_read_pending(self) -> bool:
        """True for a large calendar (:data:`READ_CACHE_MIN`) no whole read has parsed yet: the
        one read that costs O(n); after it, reads cost what changed (see :meth:`read_snapshot`)."""
        return self._reads is None and len(self.reservations) >= READ_CACHE_MIN

    def read_snapshot(self) -> ReadSnapshot | None:
        """For a large calendar not read whole yet: what :meth:`parse_snapshot` needs, taken from
        the document now (the one costly step here is Yrs' ``to_json`` of the reservations), so
        that the parsing can run in a worker thread. None: nothing to prepare."""
        if not self.first_read_pending:
            return None
        return ReadSnapshot(str(self.reservations), self.home_record, self.has_home,
                            {rid: builtins.list(v) for rid, v in self._verdict_index().items()}, self.doc.get_state())

    def parse_snapshot(self, snapshot: ReadSnapshot) -> ParsedSnapshot:
        """Parse a :meth:`read_snapshot`: reservations' fields and readings. Touches no pycrdt
        object (safe in a worker thread); hand the result to :meth:`install_reads`."""
        data = json.loads(snapshot.reservations) if snapshot.reservations else {}
        fields = {k: v for k, v in data.items() if isinstance(v, dict)}
        parsed: dict[str, Reservation | None] = {}
        states: dict[str, DecisionState] = {}
        for rid, entry in fields.items():
            decided = states[rid] = (UNDECIDED if snapshot.home is None else
                                     _decision_state(rid, entry, snapshot.home, snapshot.verdicts.get(rid), self.verifier))
            try:
                parsed[rid] = reservation_from_fields(self.name, entry, has_home=snapshot.has_home, decided=decided)
            except (KeyError, InvalidReservation):
                parsed[rid] = None
        return fields, parsed, states

    def install_reads(self, snapshot: ReadSnapshot, parsed: ParsedSnapshot) -> bool:
        """Keep what :meth:`parse_snapshot` read as this calendar's reads, if the document has not
        changed since the snapshot (else the next read reads it whole, as without one). True if kept."""
        if (self._reads is not None or self.doc.get_state() != snapshot.state
                or self.home_record != snapshot.home or self.has_home != snapshot.has_home):
            return False
        fields, readings, states = parsed
        self._reads = _ReadCache(fields, readings, decided=states)
        self._subscriptions.append(self.reservations.observe_deep(self._reservations_changed))
        return True

    def _verdict_index(self) -> dict[str, list[tuple[str, str]]]:
        if self._index is None:
            index: dict[str, list[tuple[str, str]]] = {}
            data = json.loads(str(self.verdicts)) if len(self.verdicts) else {}
            for key, text in data.items():
                if isinstance(text, str):
                    index.setdefault(reservation_of(key), []).append((key, text))
            self._index = index
        return self._index

    def list(
        self,
        *,
        resource: str | None = None,
        between: tuple[datetime | str, datetime | str] | None = None,
        statuses: Iterable[Status] | None = None,
    ) -> builtins.list[Reservation]:
        """Reservations sorted by start time, optionally filtered.

        ``between`` keeps reservations whose shown slot overlaps ``[from, to)``.
        """
        wanted = set(statuses) if statuses is not None else None
        lo = hi = None
        if between is not None:
            lo, hi = parse_time(between[0]), parse_time(between[1])
        out: builtins.list[Reservation] = []
        for item in self._listed():
            slot = item.slot
            if resource is not None and slot.resource != resource and item.resource != resource:
                continue
            if lo is not None and hi is not None and not (slot.start < hi and lo < slot.end):
                continue
            if wanted is not None and item.status not in wanted:
                continue
            out.append(item)
        return out

    def _listed(self) -> builtins.list[Reservation]:
        """Every readable reservation, sorted by shown start (kept between reads of a large calendar)."""
        reads = self._read_cache()
        if reads is not None and reads.listed is not None:
            return reads.listed
        has_home = self.has_home
        states = self.decision_state
        fields_of = reads.fields if reads is not None else self._read_all()
        parsed = reads.parsed if reads is not None else {}
        out: builtins.list[Reservation] = []
        for rid, fields in fields_of.items():
            if rid in parsed:
                item = parsed[rid]
            else:
                try:
                    item = reservation_from_fields(self.name, fields, has_home=has_home, decided=states(rid, fields))
                except (KeyError, InvalidReservation):
                    item = None  # a partly synced or hand-written entry; never crash a read
                parsed[rid] = item
            if item is not None:
                out.append(item)
        out.sort(key=lambda r: (r.slot.start, r.slot.resource, r.id))
        if reads is not None:
            reads.listed = out
        return out

    def all_fields(self) -> dict[str, dict[str, Any]]:
        """Every reservation's raw fields as plain dicts (fresh copies: the caller may change them)."""
        reads = self._read_cache()
        if reads is None:
            return self._read_all()
        return {rid: dict(fields) for rid, fields in reads.fields.items()}

    def fields_of(self, reservation_ids: Iterable[str]) -> dict[str, dict[str, Any]]:
        """The raw fields of these reservations (fresh copies; ids this replica lacks are left out):
        for a page of results, without copying the whole calendar as :meth:`all_fields` does."""
        reads = self._read_cache()
        out: dict[str, dict[str, Any]] = {}
        for rid in reservation_ids:
            if reads is not None:
                fields = reads.fields.get(rid)
                if fields is not None:
                    out[rid] = dict(fields)
            elif isinstance(self.reservations.get(rid), Map):
                out[rid] = self._fields(rid)
        return out

    def _read_all(self) -> dict[str, dict[str, Any]]:
        data = json.loads(str(self.reservations)) if len(self.reservations) else {}
        return {k: v for k, v in data.items() if isinstance(v, dict)}

    def _read_cache(self) -> _ReadCache | None:
        """The kept reads of a calendar of at least :data:`READ_CACHE_MIN` reservations, brought up
        to date with the entries changed since the last read (None: a small calendar, read whole)."""
        reads = self._reads
        if reads is None:
            if len(self.reservations) < READ_CACHE_MIN:
                return None
            reads = self._reads = _ReadCache(self._read_all())
            self._subscriptions.append(self.reservations.observe_deep(self._reservations_changed))
            return reads
        for rid in reads.dirty:
            entry = self.reservations.get(rid)
            if isinstance(entry, Map):
                reads.fields[rid] = json.loads(str(entry))
            else:
                reads.fields.pop(rid, None)
            reads.parsed.pop(rid, None)
            reads.decided.pop(rid, None)
        reads.dirty.clear()
        return reads

    def _reservations_changed(self, events: builtins.list[Any]) -> None:
        reads = self._reads
        if reads is None:
            return
        for event in events:
            path = event.path
            if path:
                reads.dirty.add(str(path[0]))
            else:
                reads.dirty.update(str(key) for key in event.keys)
        reads.listed = None

    def resource(self, resource_id: str) -> Resource | None:
        """The resource, or None if it was never declared (capacity then defaults to 1)."""
        entry = self.resources_map.get(resource_id)
        if not isinstance(entry, Map):
            return None
        return Resource(resource_id, str(entry.get("name", resource_id)), read_capacity(entry.get("capacity", 1)))

    def resources(self) -> builtins.list[Resource]:
        """All declared resources, sorted by id."""
        found = (self.resource(key) for key in sorted(self.resources_map.keys()))
        return [item for item in found if item is not None]

    @property
    def hold_ttl(self) -> timedelta | None:
        """The calendar's hold TTL setting (``meta.hold_ttl``, seconds), None if unset or unusable."""
        return read_hold_ttl(self.meta.get(HOLD_TTL_KEY))

    @property
    def time_zone(self) -> str | None:
        """The calendar's time zone setting (``meta.time_zone``, an IANA name), None if unset."""
        return read_time_zone(self.meta.get(TIME_ZONE_KEY))

    def opening_hours(self, resource_id: str) -> OpeningHours:
        """The resource's opening hours (:mod:`engine.slots`): open around the clock without a schedule."""
        entry = self.resources_map.get(resource_id)
        if not isinstance(entry, Map):
            return opening_hours(None, None)
        return opening_hours(entry.get(HOURS_KEY), entry.get(EXCEPTIONS_KEY))

    def capacity(self, resource_id: str) -> int:
        """How many booked reservations may overlap on the resource (default 1)."""
        found = self.resource(resource_id)
        return found.capacity if found else 1

    def to_py(self) -> dict[str, Any]:
        """The whole document as plain data (for comparing replicas)."""
        return {
            "reservations": self.all_fields(),
            "resources": json.loads(str(self.resources_map)) if len(self.resources_map) else {},
            "meta": json.loads(str(self.meta)) if len(self.meta) else {},
            "homes": json.loads(str(self.homes)) if len(self.homes) else {},
            "verdicts": json.loads(str(self.verdicts)) if len(self.verdicts) else {},
            "receipts": json.loads(str(self.receipts)) if len(self.receipts) else {},
        }

    # ---- writes ----------------------------------------------------------------------------

    def put_resource(self, resource_id: str, *, name: str = "", capacity: int = 1) -> Resource:
        """Declare or update a resource. Capacity must be 1-1000."""
        check_resource_id(resource_id)
        check_text("name", name)
        if not isinstance(capacity, int) or isinstance(capacity, bool) or not 1 <= capacity <= 1000:
            raise InvalidReservation(f"capacity must be a whole number from 1 to 1000, not {capacity!r}")
        with self.doc.transaction(origin=self.origin):
            entry = self.resources_map.get(resource_id)
            if isinstance(entry, Map):
                entry["name"] = name or resource_id
                entry["capacity"] = capacity
            else:
                self.resources_map[resource_id] = Map({"name": name or resource_id, "capacity": capacity})
        return Resource(resource_id, name or resource_id, capacity)

    def set_opening_hours(self, resource_id: str, *, weekly: object = None, exceptions: object = None,
                          clear: bool = False) -> OpeningHours:
        """Set a declared resource's weekly schedule and/or dated exceptions (JSON-shaped data, see
        :mod:`engine.slots`); ``clear`` removes both (open around the clock again). An admin
        setting: relays accept it from admin tokens only.

        Raises:
            InvalidReservation: the resource is not declared, or the schedule does not parse.
        """
        entry = self.resources_map.get(resource_id)
        if not isinstance(entry, Map):
            raise InvalidReservation(f"resource {resource_id!r} is not declared; declare it first")
        texts: dict[str, str] = {}
        if weekly is not None:
            texts[HOURS_KEY] = format_weekly(parse_weekly(weekly))
        if exceptions is not None:
            texts[EXCEPTIONS_KEY] = format_exceptions(parse_exceptions(exceptions))
        with self.doc.transaction(origin=self.origin):
            if clear:
                entry.pop(HOURS_KEY, None)
                entry.pop(EXCEPTIONS_KEY, None)
            for key, text in texts.items():
                if entry.get(key) != text:
                    entry[key] = text
        return self.opening_hours(resource_id)

    def set_hold_ttl(self, seconds: int | None) -> None:
        """Set (or, with None, remove) the calendar's hold TTL: pending bookings older than this
        when the home decides them are rejected ``expired``. An admin setting: relays accept it
        from admin tokens only. Whole seconds, 60 to 30 days."""
        if seconds is not None and read_hold_ttl(seconds) is None:
            raise InvalidReservation(f"hold TTL must be whole seconds from {MIN_HOLD_TTL} to {MAX_HOLD_TTL}, "
                                     f"not {seconds!r}")
        with self.doc.transaction(origin=self.origin):
            if seconds is None:
                self.meta.pop(HOLD_TTL_KEY, None)
            else:
                self.meta[HOLD_TTL_KEY] = seconds

    def set_time_zone(self, name: str | None) -> None:
        """Set (None: remove) the zone the desks show this calendar in: an IANA name such as
        ``Europe/Berlin``. An admin setting, like the hold TTL."""
        if name is not None and read_time_zone(name) is None:
            raise InvalidReservation(f"time zone {name!r} is not an IANA name such as Europe/Berlin")
        with self.doc.transaction(origin=self.origin):
            if name is None:
                self.meta.pop(TIME_ZONE_KEY, None)
            else:
                self.meta[TIME_ZONE_KEY] = name

    def add_home_record(self, record: HomeRecord, encoded: str) -> None:
        """Store a signed home record (written by the relay taking or handing over the calendar)."""
        key = record.entry_key(encoded)
        if key not in self.homes:
            with self.doc.transaction(origin=self.origin):
                self.homes[key] = encoded

    def book(
        self,
        *,
        resource: str,
        start: datetime | str,
        end: datetime | str,
        patient: str,
        now: datetime,
        service: str = "",
        note: str = "",
        reservation_id: str | None = None,
    ) -> Reservation:
        """Create a reservation (``pending`` where a home relay decides, else ``booked``).

        Raises:
            InvalidReservation: a field is missing, too long, or end is not after start.
        """
        check_resource_id(resource)
        start_at, end_at = check_interval(start, end)
        check_text("patient", patient, required=True)
        check_text("service", service)
        check_text("note", note)
        stamp = format_time(parse_time(now))
        rid = reservation_id or new_reservation_id(now)
        if rid in self.reservations:
            raise InvalidReservation(f"reservation {rid} already exists; ids must be unique")
        fields: dict[str, Any] = {
            "id": rid,
            "calendar": self.name,
            "resource": resource,
            "start": format_time(start_at),
            "end": format_time(end_at),
            "patient": patient,
            "service": service,
            "note": note,
            "requested_at": stamp,
            "created_by": self.actor,
            "created_at": stamp,
            "updated_by": self.actor,
            "updated_at": stamp,
        }
        with self.doc.transaction(origin=self.origin):
            self.reservations[rid] = Map(fields)
        return self.get(rid)

    def reschedule(
        self, reservation_id: str, *, start: datetime | str, end: datetime | str, now: datetime, resource: str | None = None
    ) -> Reservation:
        """Request a new time (and optionally resource). A booked reservation keeps its slot
        until the home relay accepts the new one.

        Raises:
            ReservationNotFound, InvalidReservation, InvalidTransition (e.g. fulfilled or cancelled).
        """
        start_at, end_at = check_interval(start, end)
        changes: dict[str, Any] = {"start": format_time(start_at), "end": format_time(end_at),
                                   "requested_at": format_time(parse_time(now))}
        if resource is not None:
            changes["resource"] = check_resource_id(resource)
        return self._update(reservation_id, Action.RESCHEDULE, changes, now)

    def edit(self, reservation_id: str, *, now: datetime, note: str | None = None, service: str | None = None,
             patient: str | None = None) -> Reservation:
        """Change descriptive fields; only the fields given are written (so concurrent edits merge)."""
        changes: dict[str, Any] = {}
        if note is not None:
            changes["note"] = check_text("note", note)
        if service is not None:
            changes["service"] = check_text("service", service)
        if patient is not None:
            changes["patient"] = check_text("patient", patient, required=True)
        if not changes:
            raise InvalidReservation("nothing to change: give a note, service or patient")
        return self._update(reservation_id, Action.EDIT, changes, now)

    def cancel(self, reservation_id: str, *, now: datetime, reason: str = "") -> Reservation:
        """Cancel; the reservation stays as a record (never deleted) and frees its slot."""
        check_text("reason", reason)
        stamp = format_time(parse_time(now))
        return self._update(reservation_id, Action.CANCEL, {"cancelled_at": stamp, "cancel_reason": reason}, now)

    def mark_entered_in_error(self, reservation_id: str, *, now: datetime, reason: str = "") -> Reservation:
        """Close a reservation that should never have existed (FHIR ``entered-in-error``)."""
        check_text("reason", reason)
        stamp = format_time(parse_time(now))
        return self._update(
            reservation_id, Action.ENTERED_IN_ERROR, {"entered_in_error_at": stamp, "cancel_reason": reason}, now
        )

    def check_in(self, reservation_id: str, *, now: datetime) -> Reservation:
        """The patient has arrived. Only a booked reservation can be checked in."""
        return self._update(reservation_id, Action.CHECK_IN, {"checked_in_at": format_time(parse_time(now))}, now)

    def fulfil(self, reservation_id: str, *, now: datetime) -> Reservation:
        """The appointment took place."""
        return self._update(reservation_id, Action.FULFILL, {"fulfilled_at": format_time(parse_time(now))}, now)

    def no_show(self, reservation_id: str, *, now: datetime) -> Reservation:
        """The patient did not come."""
        return self._update(reservation_id, Action.NOSHOW, {"noshow_at": format_time(parse_time(now))}, now)

    # ---- internals ----------------------------------------------------------------------------

    def _entry(self, reservation_id: str) -> Map[Any]:
        entry = self.reservations.get(reservation_id)
        if not isinstance(entry, Map):
            raise ReservationNotFound(
                f"no reservation {reservation_id!r} in calendar {self.name!r} on this replica; "
                "check the id, or sync and try again"
            )
        return entry

    def _fields(self, reservation_id: str) -> dict[str, Any]:
        data: dict[str, Any] = json.loads(str(self._entry(reservation_id)))
        return data

    def _update(self, reservation_id: str, action: Action, changes: dict[str, Any], now: datetime) -> Reservation:
        entry = self._entry(reservation_id)
        status = self.get(reservation_id).status  # ReservationNotFound for an entry only partly here: nothing written
        if status not in ALLOWED_FROM[action]:
            raise InvalidTransition(
                f"cannot {action} reservation {reservation_id} ({status}): {WHY_REFUSED[status]}"
            )
        changes = {**changes, "updated_by": self.actor, "updated_at": format_time(parse_time(now))}
        with self.doc.transaction(origin=self.origin):
            for key, value in changes.items():
                if entry.get(key) != value:
                    entry[key] = value
        return self.get(reservation_id)

