"""The reservation model: statuses, the lifecycle table, value types and input validation.

A reservation is stored as *facts*, never as a status string that two replicas could
overwrite concurrently:

- the **request** (``resource``, ``start``, ``end``, ``patient``, ...) in the reservation's
  map, written by terminals;
- **lifecycle marks** (``cancelled_at``, ``checked_in_at``, ...) in the same map, each written
  once; a mark counts when its key is present, whatever its value, and relays refuse updates
  that remove one, so no write can un-cancel a reservation;
- the **decision**: signed verdicts of the calendar's home relay, kept apart in the calendar's
  ``verdicts`` map (:mod:`engine.authority`); the calendar summarises the genuine ones for a
  reservation as a :class:`DecisionState`.

:func:`derive_status` turns those facts into the visible FHIR-style :class:`Status`. Every
replica holding the same facts derives the same status, whatever order the facts arrived in.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NewType

from .errors import InvalidCalendarName, InvalidReservation

CalendarId = NewType("CalendarId", str)
ReservationId = NewType("ReservationId", str)

CALENDAR_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._/-]{0,127}")
RESOURCE_ID = re.compile(r"[A-Za-z0-9._-]{1,64}")
MAX_LENGTHS = {"patient": 256, "service": 128, "note": 2000, "reason": 500, "actor": 64, "name": 128}
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class Status(enum.StrEnum):
    """Visible status, HL7 FHIR Appointment codes where they map, plus ``rejected``."""

    PENDING = "pending"
    BOOKED = "booked"
    REJECTED = "rejected"
    CANCELLED = "cancelled"
    CHECKED_IN = "checked-in"
    FULFILLED = "fulfilled"
    NOSHOW = "noshow"
    ENTERED_IN_ERROR = "entered-in-error"


class Action(enum.StrEnum):
    """What a user may ask of a reservation; checked against :data:`ALLOWED_FROM`."""

    RESCHEDULE = "reschedule"
    CANCEL = "cancel"
    CHECK_IN = "check in"
    FULFILL = "fulfil"
    NOSHOW = "mark no-show"
    ENTERED_IN_ERROR = "mark entered-in-error"
    EDIT = "edit"


# Every allowed user action by current status, in one table; anything else raises InvalidTransition.
ALLOWED_FROM: dict[Action, frozenset[Status]] = {
    Action.RESCHEDULE: frozenset({Status.PENDING, Status.BOOKED, Status.REJECTED}),
    Action.CANCEL: frozenset({Status.PENDING, Status.BOOKED, Status.REJECTED}),
    Action.CHECK_IN: frozenset({Status.BOOKED}),
    Action.FULFILL: frozenset({Status.BOOKED, Status.CHECKED_IN}),
    Action.NOSHOW: frozenset({Status.BOOKED}),
    Action.ENTERED_IN_ERROR: frozenset(set(Status) - {Status.ENTERED_IN_ERROR}),
    Action.EDIT: frozenset(set(Status) - {Status.ENTERED_IN_ERROR}),
}

WHY_REFUSED: dict[Status, str] = {
    Status.PENDING: "the home relay has not booked it yet; wait for the decision",
    Status.REJECTED: "the home relay rejected it; reschedule it to a free slot first",
    Status.CANCELLED: "it is cancelled; book a new reservation instead",
    Status.CHECKED_IN: "the patient is already checked in",
    Status.FULFILLED: "the appointment already took place",
    Status.NOSHOW: "it is marked as a no-show",
    Status.ENTERED_IN_ERROR: "it was entered in error and is closed",
    Status.BOOKED: "it is booked",
}

# Lifecycle marks in precedence order: the first one present decides the status.
LIFECYCLE_MARKS: tuple[tuple[str, Status], ...] = (
    ("entered_in_error_at", Status.ENTERED_IN_ERROR),
    ("cancelled_at", Status.CANCELLED),
    ("noshow_at", Status.NOSHOW),
    ("fulfilled_at", Status.FULFILLED),
    ("checked_in_at", Status.CHECKED_IN),
)

# Keys of the retired decision format (decisions are signed verdicts now): nobody writes them,
# nothing reads them, and relays refuse updates that write them.
DECISION_KEYS = frozenset(
    {
        "decision",
        "decided_start",
        "decided_end",
        "decided_resource",
        "booked_start",
        "booked_end",
        "booked_resource",
        "reason",
        "conflict_with",
        "decided_by",
        "decided_at",
        "decided_request",
    }
)


class Decision(enum.StrEnum):
    """What the home relay decided (a verdict's outcome)."""

    BOOKED = "booked"
    REJECTED = "rejected"
    RELEASED = "released"  # the reservation was cancelled and its slot freed


@dataclass(frozen=True, slots=True)
class DecisionState:
    """What the home has genuinely decided about one reservation (from verified verdicts).

    ``current``: the outcome for the request as it stands now (None: not decided yet);
    ``booked``: the slot the reservation holds, as ``(resource, start, end)`` strings;
    ``released``: the home freed the reservation's slot after it was cancelled.
    """

    current: Decision | None = None
    booked: tuple[str, str, str] | None = None
    released: bool = False
    reason: str = ""
    conflict_with: str = ""
    decided_by: str = ""
    seq: int = 0  # the latest verdict's sequence number (0: none)


UNDECIDED = DecisionState()


@dataclass(frozen=True, slots=True, order=True)
class Slot:
    """A half-open interval ``[start, end)`` on one resource, in UTC."""

    resource: str
    start: datetime
    end: datetime

    def overlaps(self, other: Slot) -> bool:
        """True if both are on the same resource and share at least one instant."""
        return self.resource == other.resource and self.start < other.end and other.start < self.end

    def __str__(self) -> str:
        return f"{self.resource} {format_time(self.start)}..{format_time(self.end)}"


@dataclass(frozen=True, slots=True)
class Resource:
    """A bookable thing (room, clinician, device) with a capacity (default 1)."""

    id: str
    name: str
    capacity: int = 1


@dataclass(frozen=True, slots=True)
class Reservation:
    """One appointment as a replica sees it now. Never a live pycrdt object.

    ``start``/``end``/``resource`` are what was requested last; ``booked`` is the slot the
    home relay confirmed (``None`` until then). A reschedule of a booked reservation keeps
    ``booked`` at the old slot until the home accepts the new one; ``proposal`` tells
    whether such a newer request is ``pending`` or was ``rejected``.
    """

    id: ReservationId
    calendar: CalendarId
    resource: str
    start: datetime
    end: datetime
    patient: str
    service: str
    note: str
    status: Status
    reason: str
    conflict_with: str
    booked: Slot | None
    proposal: str | None
    created_by: str
    created_at: datetime
    updated_by: str
    updated_at: datetime
    decided_by: str

    @property
    def requested(self) -> Slot:
        """The slot the requester asked for most recently."""
        return Slot(self.resource, self.start, self.end)

    @property
    def slot(self) -> Slot:
        """The slot to show: the confirmed one when there is one, else the requested one."""
        return self.booked or self.requested

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (times as RFC 3339 UTC strings)."""
        return {
            "id": self.id,
            "calendar": self.calendar,
            "resource": self.resource,
            "start": format_time(self.start),
            "end": format_time(self.end),
            "patient": self.patient,
            "service": self.service,
            "note": self.note,
            "status": str(self.status),
            "reason": self.reason,
            "conflict_with": self.conflict_with,
            "booked": None
            if self.booked is None
            else {
                "resource": self.booked.resource,
                "start": format_time(self.booked.start),
                "end": format_time(self.booked.end),
            },
            "proposal": self.proposal,
            "created_by": self.created_by,
            "created_at": format_time(self.created_at),
            "updated_by": self.updated_by,
            "updated_at": format_time(self.updated_at),
            "decided_by": self.decided_by,
        }


def derive_status(fields: Mapping[str, Any], *, has_home: bool, decided: DecisionState = UNDECIDED) -> Status:
    """The visible status of a reservation from its stored facts.

    Lifecycle marks win over decisions (a cancel racing a decision ends cancelled), and a mark
    counts when its key is present. A slot the home released stays released even if the mark
    that caused it were lost. Without a home relay a calendar is a plain CRDT calendar and every
    live request counts as booked.
    """
    for key, status in LIFECYCLE_MARKS:
        if key in fields:
            return status
    if decided.released:
        return Status.CANCELLED
    if not has_home or decided.booked is not None:
        return Status.BOOKED
    if decided.current is Decision.REJECTED:
        return Status.REJECTED
    return Status.PENDING


def reservation_from_fields(calendar: CalendarId, fields: Mapping[str, Any], *, has_home: bool,
                            decided: DecisionState = UNDECIDED) -> Reservation:
    """Build the frozen view of one stored reservation map (as a plain dict) and its decisions."""
    status = derive_status(fields, has_home=has_home, decided=decided)
    booked = None
    if decided.booked is not None and has_home:
        resource, start, end = decided.booked
        booked = Slot(resource, parse_time(start), parse_time(end))
    proposal = None
    if has_home and booked is not None and status is Status.BOOKED:
        requested = Slot(str(fields.get("resource", "")), parse_time(fields["start"]), parse_time(fields["end"]))
        if requested != booked:
            proposal = "rejected" if decided.current is Decision.REJECTED else "pending"
    reason = decided.reason
    if status is Status.CANCELLED or status is Status.ENTERED_IN_ERROR:
        reason = str(fields.get("cancel_reason", "")) or reason
    return Reservation(
        id=ReservationId(str(fields.get("id", ""))),
        calendar=calendar,
        resource=str(fields.get("resource", "")),
        start=parse_time(fields["start"]),
        end=parse_time(fields["end"]),
        patient=str(fields.get("patient", "")),
        service=str(fields.get("service", "")),
        note=str(fields.get("note", "")),
        status=status,
        reason=reason if status in (Status.REJECTED, Status.CANCELLED, Status.ENTERED_IN_ERROR) or proposal else "",
        conflict_with=decided.conflict_with if status is Status.REJECTED or proposal else "",
        booked=booked,
        proposal=proposal,
        created_by=str(fields.get("created_by", "")),
        created_at=parse_time(fields.get("created_at", "1970-01-01T00:00:00Z")),
        updated_by=str(fields.get("updated_by", "")),
        updated_at=parse_time(fields.get("updated_at", "1970-01-01T00:00:00Z")),
        decided_by=decided.decided_by,
    )


# ---- validation and formatting -------------------------------------------------------------


def check_calendar_name(name: str) -> CalendarId:
    """Return ``name`` as a :data:`CalendarId`, or raise :class:`InvalidCalendarName`."""
    if not isinstance(name, str) or not CALENDAR_NAME.fullmatch(name) or ".." in name.split("/"):
        raise InvalidCalendarName(
            f"calendar name {name!r} is invalid: use 1-128 characters of A-Z a-z 0-9 . _ - /, starting with a letter or digit"
        )
    return CalendarId(name)


def check_resource_id(resource: str) -> str:
    """Return ``resource`` if it is 1-64 characters of ``A-Za-z0-9._-``."""
    if not isinstance(resource, str) or not RESOURCE_ID.fullmatch(resource):
        raise InvalidReservation(f"resource id {resource!r} is invalid: use 1-64 characters of A-Z a-z 0-9 . _ -")
    return resource


def check_text(field: str, value: str, *, required: bool = False) -> str:
    """Return ``value`` if it is a string within the field's length limit."""
    if not isinstance(value, str):
        raise InvalidReservation(f"{field} must be text, not {type(value).__name__}")
    if required and not value.strip():
        raise InvalidReservation(f"{field} is required")
    limit = MAX_LENGTHS[field]
    if len(value) > limit:
        raise InvalidReservation(f"{field} is {len(value)} characters long; the limit is {limit}")
    return value


def parse_time(value: datetime | str) -> datetime:
    """An aware datetime or an RFC 3339 string with an offset, normalised to UTC (whole seconds)."""
    if isinstance(value, str):
        text = value.strip()
        if text.endswith(("Z", "z")):
            text = text[:-1] + "+00:00"
        try:
            parsed = datetime.fromisoformat(text)
        except ValueError:
            raise InvalidReservation(
                f"time {value!r} is not RFC 3339; write it like 2026-12-01T09:30:00+01:00 or 2026-12-01T08:30Z"
            ) from None
        value = parsed
    if not isinstance(value, datetime):
        raise InvalidReservation(f"time must be a datetime or RFC 3339 text, not {type(value).__name__}")
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidReservation(f"time {value.isoformat()} has no UTC offset; add one (e.g. Z or +01:00)")
    return value.astimezone(UTC).replace(microsecond=0)


def format_time(value: datetime) -> str:
    """The stored form: UTC, whole seconds, ``Z`` suffix; sorts lexicographically by time."""
    return value.astimezone(UTC).strftime(TIME_FORMAT)


def check_interval(start: datetime | str, end: datetime | str) -> tuple[datetime, datetime]:
    """Parse both ends; raise unless ``end`` is after ``start`` and the span is at most 31 days."""
    start_at, end_at = parse_time(start), parse_time(end)
    if end_at <= start_at:
        raise InvalidReservation(
            f"end {format_time(end_at)} is not after start {format_time(start_at)}; a reservation needs a positive duration"
        )
    if end_at - start_at > timedelta(days=31):
        raise InvalidReservation("a reservation may span at most 31 days; split longer stays")
    return start_at, end_at


def new_reservation_id(now: datetime) -> ReservationId:
    """A UUIDv7 (RFC 9562): time-ordered, made offline without coordination."""
    millis = int(now.timestamp() * 1000) & ((1 << 48) - 1)
    rand = int.from_bytes(os.urandom(10), "big")
    value = (millis << 80) | (0x7 << 76) | ((rand >> 68) & 0xFFF) << 64 | (0b10 << 62) | (rand & ((1 << 62) - 1))
    text = f"{value:032x}"
    return ReservationId(f"{text[:8]}-{text[8:12]}-{text[12:16]}-{text[16:20]}-{text[20:]}")

