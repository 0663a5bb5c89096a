"""A calendar: one pycrdt document and a typed API over it.

Layout of the document (shared with stock Yjs clients and the browser board):

- ``reservations``: Map reservation id -> Map of fields (one key per field, so concurrent
  edits of different fields both survive; see :mod:`engine.model` for the three key groups);
- ``resources``: Map resource id -> Map (``name``, ``capacity``);
- ``meta``: calendar-level settings, e.g. ``home`` (the relay that decides bookings).

Every write is one transaction tagged with the calendar's ``origin`` so that I/O layers can
tell local writes from applied remote updates. Reads return frozen dataclasses.
Nothing here does I/O or reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import builtins
import json
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from pycrdt import Doc, Map

from .errors import InvalidReservation, InvalidTransition, ReservationNotFound
from .model import (
    ALLOWED_FROM,
    WHY_REFUSED,
    Action,
    CalendarId,
    Reservation,
    Resource,
    Status,
    check_calendar_name,
    check_interval,
    check_resource_id,
    check_text,
    derive_status,
    format_time,
    new_reservation_id,
    parse_time,
    reservation_from_fields,
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
        self.assume_home = assume_home
        self.reservations = self.doc.get("reservations", type=Map)
        self.resources_map = self.doc.get("resources", type=Map)
        self.meta = self.doc.get("meta", type=Map)

    # ---- reads -----------------------------------------------------------------------------

    @property
    def has_home(self) -> bool:
        """True if a home relay decides bookings here (known from ``meta.home``, or assumed)."""
        return self.assume_home or self.home is not None

    @property
    def home(self) -> str | None:
        """The relay id that decides bookings for this calendar, or None (plain CRDT calendar)."""
        value = self.meta.get("home")
        return str(value) if value else None

    def get(self, reservation_id: str) -> Reservation:
        """The reservation with this id.

        Raises:
            ReservationNotFound: if this replica has no such reservation (it may not have synced yet).
        """
        return reservation_from_fields(self.name, self._fields(reservation_id), has_home=self.has_home)

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
        has_home = self.has_home
        wanted = set(statuses) if statuses is not None else None
        lo = hi = None
        if between is not None:
            lo, hi = parse_time(between[0]), parse_time(between[1])
        out: builtins.list[Reservation] = []
        for fields in self.all_fields().values():
            try:
                item = reservation_from_fields(self.name, fields, has_home=has_home)
            except (KeyError, InvalidReservation):
                continue  # a partly synced or hand-written entry; never crash a read
            slot = item.slot
            if resource is not None and slot.resource != resource and item.resource != resource:
                continue
            if lo is not None and hi is not None and not (slot.start < hi and lo < slot.end):
                continue
            if wanted is not None and item.status not in wanted:
                continue
            out.append(item)
        out.sort(key=lambda r: (r.slot.start, r.slot.resource, r.id))
        return out

    def all_fields(self) -> dict[str, dict[str, Any]]:
        """Every reservation's raw fields as plain dicts (one Yrs to_json call; fast)."""
        data = json.loads(str(self.reservations)) if len(self.reservations) else {}
        return {k: v for k, v in data.items() if isinstance(v, dict)}

    def resource(self, resource_id: str) -> Resource | None:
        """The resource, or None if it was never declared (capacity then defaults to 1)."""
        entry = self.resources_map.get(resource_id)
        if not isinstance(entry, Map):
            return None
        capacity = entry.get("capacity", 1)
        return Resource(resource_id, str(entry.get("name", resource_id)), int(capacity) if capacity else 1)

    def resources(self) -> builtins.list[Resource]:
        """All declared resources, sorted by id."""
        found = (self.resource(key) for key in sorted(self.resources_map.keys()))
        return [item for item in found if item is not None]

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

    def set_home(self, relay_id: str) -> None:
        """Record which relay decides bookings for this calendar (written by that relay)."""
        check_text("actor", relay_id, required=True)
        if self.meta.get("home") != relay_id:
            with self.doc.transaction(origin=self.origin):
                self.meta["home"] = relay_id

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
        status = derive_status(json.loads(str(entry)), has_home=self.has_home)
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

