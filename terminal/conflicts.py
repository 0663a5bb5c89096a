"""Overlapping bookings on one resource: what ``accord terminal list --conflicts`` shows.

Calendars without a home relay are plain CRDT calendars: two offline terminals can both book
the same slot and both bookings survive the merge. This module finds where more reservations
hold a resource at once than its capacity allows, so a person can resolve it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime

from accord.engine.calendar import Calendar
from accord.engine.model import Reservation, Status

# Statuses that occupy their slot.
HOLDING = frozenset({Status.BOOKED, Status.CHECKED_IN})


@dataclass(frozen=True, slots=True)
class Conflict:
    """A run of overlapping reservations on one resource that somewhere exceeds its capacity."""

    resource: str
    start: datetime
    end: datetime
    capacity: int
    reservations: tuple[Reservation, ...]


def find_conflicts(reservations: Iterable[Reservation], capacity: Callable[[str], int], *,
                   holding: frozenset[Status] = HOLDING) -> list[Conflict]:
    """Overbooked runs, sorted by resource and start.

    Args:
        reservations: any reservations; only those whose status is in ``holding`` count
            (default: booked, checked in).
        capacity: a resource's capacity (e.g. ``Calendar.capacity``).
    """
    by_resource: dict[str, list[Reservation]] = {}
    for item in reservations:
        if item.status in holding:
            by_resource.setdefault(item.slot.resource, []).append(item)
    found: list[Conflict] = []
    for resource, items in sorted(by_resource.items()):
        limit = capacity(resource)
        # Half-open slots: at equal times an end comes before a start (0 < 1), so back-to-back is fine.
        events = sorted(
            [(r.slot.start, 1, r.id, r) for r in items] + [(r.slot.end, 0, r.id, r) for r in items],
            key=lambda e: (e[0], e[1], e[2]),
        )
        active: set[str] = set()
        run: list[Reservation] = []
        over = False
        for _at, kind, rid, item in events:
            if kind == 1:
                active.add(rid)
                run.append(item)
                over = over or len(active) > limit
                continue
            active.discard(rid)
            if not active:
                if over:
                    found.append(
                        Conflict(
                            resource=resource,
                            start=min(r.slot.start for r in run),
                            end=max(r.slot.end for r in run),
                            capacity=limit,
                            reservations=tuple(sorted(run, key=lambda r: (r.slot.start, r.id))),
                        )
                    )
                run, over = [], False
    return found


def calendar_conflicts(
    calendar: Calendar, resource: str | None = None, between: tuple[datetime | str, datetime | str] | None = None
) -> list[Conflict]:
    """Overbooked runs in ``calendar`` (optionally one resource, one time window).

    Until a home relay is known, pending bookings are what a plain calendar would book: they count.
    """
    holding = HOLDING if calendar.home is not None else HOLDING | {Status.PENDING}
    return find_conflicts(calendar.list(resource=resource, between=between), calendar.capacity, holding=holding)
