"""Opening hours and free-slot search: pure computation, no clock, no I/O.

A resource may carry two admin settings in its ``resources`` entry (see
:meth:`engine.calendar.Calendar.set_opening_hours`), both JSON text:

- ``hours``: the weekly schedule, ``{"mon": [["08:00", "12:00"], ["13:00", "17:00"]], ...}``;
  a day that is not named is closed. Without ``hours`` the resource is open around the clock.
- ``hours_exceptions``: dates that differ from the week, ``{"2026-12-25": [], "2026-12-24":
  [["08:00", "12:00"]]}`` (an empty list: closed all day).

Times are wall-clock times in the calendar's zone (``meta.time_zone``; UTC without one), so a
clinic that opens at 08:00 opens at 08:00 on both sides of a daylight-saving change. ``"24:00"``
may end an interval.

:func:`compute_slots` lays the bookings over the open intervals and cuts them where the count of
holders changes: a segment is ``busy`` when booked reservations fill the resource's capacity,
``busy-tentative`` when booked plus pending ones do (a pending request the home may still
reject), else ``free``. Adjacent segments of one status are merged.
"""

from __future__ import annotations

import enum
import itertools
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from .errors import InvalidReservation
from .model import Reservation, Status

HOURS_KEY = "hours"
EXCEPTIONS_KEY = "hours_exceptions"
DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
MAX_INTERVALS_PER_DAY = 8
MAX_EXCEPTIONS = 400
MAX_SEARCH = timedelta(days=62)
"""The longest window one search may cover (bounds the work per request)."""

_HHMM = re.compile(r"[0-9]{2}:[0-9]{2}")  # ASCII digits only: str.isdigit() also takes "²", which int() refuses
_DATE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}")  # date.fromisoformat() also takes 20261225 and 2026-W52-5

Interval = tuple[time, time | None]  # None: midnight at the end of the day ("24:00")

# Statuses that hold a slot: booked ones fully, pending ones tentatively.
HOLDING = frozenset({Status.BOOKED, Status.CHECKED_IN, Status.FULFILLED, Status.NOSHOW})


class SlotStatus(enum.StrEnum):
    """FHIR ``Slot.status`` codes this computation produces."""

    FREE = "free"
    BUSY = "busy"
    BUSY_TENTATIVE = "busy-tentative"


@dataclass(frozen=True, slots=True)
class OpeningHours:
    """A resource's weekly schedule (weekday 0 = Monday -> intervals) and dated exceptions."""

    weekly: Mapping[int, tuple[Interval, ...]]
    exceptions: Mapping[date, tuple[Interval, ...]]

    def intervals_on(self, day: date) -> tuple[Interval, ...]:
        """The wall-clock intervals the resource is open on ``day``."""
        if day in self.exceptions:
            return self.exceptions[day]
        return self.weekly.get(day.weekday(), ())


ALWAYS_OPEN = OpeningHours({d: ((time(0), None),) for d in range(7)}, {})


@dataclass(frozen=True, slots=True, order=True)
class ComputedSlot:
    """A stretch of one resource's open time with one status, ``[start, end)`` in UTC."""

    start: datetime
    end: datetime
    resource: str
    status: SlotStatus


@dataclass(frozen=True, slots=True)
class Hold:
    """A reservation's claim on a resource: ``tentative`` for a pending request."""

    start: datetime
    end: datetime
    tentative: bool


# ---- parsing and validation ----------------------------------------------------------------------


def _clock(text: object, *, end: bool) -> time | None:
    if not isinstance(text, str) or not _HHMM.fullmatch(text):
        raise InvalidReservation(f"opening time {text!r} is not HH:MM (e.g. 08:30)")
    if end and text == "24:00":
        return None
    hour, minute = int(text[:2]), int(text[3:])
    if hour > 23 or minute > 59:
        raise InvalidReservation(f"opening time {text!r} is not a time of day (00:00-23:59, or 24:00 as an end)")
    return time(hour, minute)


def _intervals(value: object, where: str) -> tuple[Interval, ...]:
    if not isinstance(value, list) or len(value) > MAX_INTERVALS_PER_DAY:
        raise InvalidReservation(f"{where}: give a list of at most {MAX_INTERVALS_PER_DAY} [open, close] pairs")
    out: list[Interval] = []
    for pair in value:
        if not isinstance(pair, list) or len(pair) != 2:
            raise InvalidReservation(f"{where}: each interval is a pair like [\"08:00\", \"12:00\"]")
        start, stop = _clock(pair[0], end=False), _clock(pair[1], end=True)
        assert start is not None
        if stop is not None and stop <= start:
            raise InvalidReservation(f"{where}: {pair[0]}-{pair[1]} closes before it opens")
        if out and (out[-1][1] is None or start < out[-1][1]):  # type: ignore[operator]
            raise InvalidReservation(f"{where}: intervals must be in order and not overlap")
        out.append((start, stop))
    return tuple(out)


def parse_weekly(data: object) -> dict[int, tuple[Interval, ...]]:
    """A weekly schedule from its JSON form (see the module docstring).

    Raises:
        InvalidReservation: an unknown day, a malformed time, overlapping or reversed intervals.
    """
    if not isinstance(data, dict):
        raise InvalidReservation('opening hours are an object like {"mon": [["08:00", "17:00"]]}')
    weekly: dict[int, tuple[Interval, ...]] = {}
    for key, value in data.items():
        if key not in DAYS:
            raise InvalidReservation(f"opening hours: unknown day {key!r}; use {', '.join(DAYS)}")
        weekly[DAYS.index(key)] = _intervals(value, key)
    return weekly


def parse_exceptions(data: object) -> dict[date, tuple[Interval, ...]]:
    """Dated exceptions from their JSON form (``{"2026-12-25": []}``).

    Raises:
        InvalidReservation: a malformed date or interval, or more than :data:`MAX_EXCEPTIONS`.
    """
    if not isinstance(data, dict) or len(data) > MAX_EXCEPTIONS:
        raise InvalidReservation(f'exceptions are an object like {{"2026-12-25": []}} with at most {MAX_EXCEPTIONS} dates')
    out: dict[date, tuple[Interval, ...]] = {}
    for key, value in data.items():
        try:
            if not isinstance(key, str) or not _DATE.fullmatch(key):
                raise ValueError(key)
            day = date.fromisoformat(key)
        except ValueError:
            raise InvalidReservation(f"exception date {key!r} is not YYYY-MM-DD") from None
        out[day] = _intervals(value, key)
    return out


def _load(text: object) -> object:
    if not isinstance(text, str):
        raise InvalidReservation("opening hours are stored as JSON text")
    try:
        return json.loads(text)
    except ValueError:
        raise InvalidReservation("opening hours are not valid JSON") from None


def read_weekly(text: object) -> dict[int, tuple[Interval, ...]] | None:
    """A stored ``hours`` value as a schedule; None if it does not read (the update policy refuses those)."""
    try:
        return parse_weekly(_load(text))
    except InvalidReservation:
        return None


def read_exceptions(text: object) -> dict[date, tuple[Interval, ...]] | None:
    """A stored ``hours_exceptions`` value; None if it does not read."""
    try:
        return parse_exceptions(_load(text))
    except InvalidReservation:
        return None


def opening_hours(hours: object, exceptions: object) -> OpeningHours:
    """A resource's opening hours from its two stored settings (either may be missing: None).

    Without ``hours`` the resource is open around the clock (exceptions still close days). A
    value that does not read counts as closed, the safe reading: nothing is offered as free.
    """
    weekly = ALWAYS_OPEN.weekly if hours is None else (read_weekly(hours) or {})
    dated = {} if exceptions is None else (read_exceptions(exceptions) or {})
    return OpeningHours(weekly, dated)


def format_weekly(weekly: Mapping[int, tuple[Interval, ...]]) -> str:
    """The stored JSON text of a weekly schedule."""
    return json.dumps({DAYS[d]: [_pair(i) for i in weekly[d]] for d in sorted(weekly)}, separators=(",", ":"))


def format_exceptions(exceptions: Mapping[date, tuple[Interval, ...]]) -> str:
    """The stored JSON text of dated exceptions."""
    return json.dumps({d.isoformat(): [_pair(i) for i in exceptions[d]] for d in sorted(exceptions)},
                      separators=(",", ":"))


def _pair(interval: Interval) -> list[str]:
    start, stop = interval
    return [start.strftime("%H:%M"), stop.strftime("%H:%M") if stop is not None else "24:00"]


def zone_of(name: str | None) -> tzinfo:
    """The zone opening hours are read in: the calendar's ``meta.time_zone``, UTC without one
    (or for a name this machine's tz database lacks)."""
    if not name or name.upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return UTC


# ---- computation ---------------------------------------------------------------------------------


def open_intervals(hours: OpeningHours, zone: tzinfo, lo: datetime, hi: datetime) -> list[tuple[datetime, datetime]]:
    """The UTC intervals within ``[lo, hi)`` in which the resource is open (merged, sorted)."""
    if hi - lo > MAX_SEARCH:
        raise InvalidReservation(f"search at most {MAX_SEARCH.days} days at a time")
    out: list[tuple[datetime, datetime]] = []
    day = lo.astimezone(zone).date() - timedelta(days=1)
    last = hi.astimezone(zone).date()
    while day <= last:
        for start, stop in hours.intervals_on(day):
            begin = datetime.combine(day, start, tzinfo=zone).astimezone(UTC)
            end_day = day + timedelta(days=1) if stop is None else day
            end = datetime.combine(end_day, stop or time(0), tzinfo=zone).astimezone(UTC)
            begin, end = max(begin, lo), min(end, hi)
            if begin >= end:
                continue
            if out and begin <= out[-1][1]:
                out[-1] = (out[-1][0], max(out[-1][1], end))
            else:
                out.append((begin, end))
        day += timedelta(days=1)
    return out


def holds_on(reservations: Iterable[Reservation], resource: str) -> list[Hold]:
    """What each live reservation claims on ``resource``: its confirmed slot (booked), its
    requested slot while pending, and a pending reschedule's new slot (tentatively)."""
    holds: list[Hold] = []
    for item in reservations:
        if item.status in HOLDING:
            slot = item.slot
            if slot.resource == resource:
                holds.append(Hold(slot.start, slot.end, tentative=False))
            if item.proposal == "pending" and item.resource == resource and item.requested != slot:
                holds.append(Hold(item.start, item.end, tentative=True))
        elif item.status is Status.PENDING and item.resource == resource:
            holds.append(Hold(item.start, item.end, tentative=True))
    return holds


def compute_slots(resource: str, intervals: list[tuple[datetime, datetime]], holds: list[Hold],
                  capacity: int) -> list[ComputedSlot]:
    """Cut the open ``intervals`` into free, busy-tentative and busy stretches (see the module docstring)."""
    out: list[ComputedSlot] = []
    for lo, hi in intervals:
        cuts = {lo, hi}
        inside = [h for h in holds if h.start < hi and lo < h.end]
        for h in inside:
            cuts.update(t for t in (h.start, h.end) if lo < t < hi)
        points = sorted(cuts)
        for begin, end in itertools.pairwise(points):
            booked = sum(1 for h in inside if not h.tentative and h.start < end and begin < h.end)
            pending = sum(1 for h in inside if h.tentative and h.start < end and begin < h.end)
            status = (SlotStatus.BUSY if booked >= capacity
                      else SlotStatus.BUSY_TENTATIVE if booked + pending >= capacity else SlotStatus.FREE)
            if out and out[-1].status is status and out[-1].end == begin and out[-1].resource == resource:
                out[-1] = ComputedSlot(out[-1].start, end, resource, status)
            else:
                out.append(ComputedSlot(begin, end, resource, status))
    return out


def free_intervals(slots: Iterable[ComputedSlot], minimum: timedelta = timedelta(0)) -> list[ComputedSlot]:
    """The free stretches at least ``minimum`` long."""
    return [s for s in slots if s.status is SlotStatus.FREE and s.end - s.start >= max(minimum, timedelta(seconds=1))]


def split(slots: Iterable[ComputedSlot], duration: timedelta) -> list[ComputedSlot]:
    """Free stretches cut into back-to-back appointments of ``duration`` (a shorter rest is dropped)."""
    if duration <= timedelta(0):
        raise InvalidReservation("a duration must be positive")
    out: list[ComputedSlot] = []
    for s in slots:
        begin = s.start
        while begin + duration <= s.end:
            out.append(ComputedSlot(begin, begin + duration, s.resource, s.status))
            begin += duration
    return out
