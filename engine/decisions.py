"""Booking decisions at a calendar's home relay: the "no double booking" core.

Theory of operation
-------------------
Terminals write *requests* (``resource``, ``start``, ``end``) offline and merge them like any
CRDT data, so two terminals can ask for the same slot. Like Bayou's primary server, exactly
one replica, the calendar's **home relay**, turns requests into decisions. It holds one
:class:`Decider` per calendar, which

1. watches the ``reservations`` map (``observe_deep``) and queues, in arrival order, the ids
   of reservations whose request, lifecycle marks or booked slot changed. A pycrdt observer
   may not write, so it only queues; one batch of changes (one applied update) is queued as a
   group and ordered by ``(created_at, id)`` when decided, which makes decisions
   deterministic given the order updates arrive in;
2. on :meth:`Decider.decide_queued` (the relay calls it after applying updates), decides
   each queued reservation that needs it and writes all decisions of the call in one
   transaction with origin ``("decider", relay_id)``; the relay forwards that change like
   any other.

A reservation **needs a decision** when it carries no lifecycle mark and its request differs
from the last one decided (:func:`engine.model.is_decided`). The request is **booked** if,
at every instant of it, fewer than ``capacity`` booked reservations of the resource overlap
it; the reservation's own previous booking does not count (a reschedule may overlap its old
slot). Otherwise it is **rejected** with reason ``conflict`` and ``conflict_with`` naming the
overlapping booked reservation that starts first (ties: smallest id). A rejected reschedule
keeps the booking it had (``booked_*`` untouched), so the reservation stays booked with a
rejected proposal. Requests with unusable fields are rejected as ``invalid``.

**What occupies a slot.** A reservation occupies its ``booked_*`` slot until it is cancelled
or marked entered-in-error. Checked-in, fulfilled and no-show reservations keep occupying
it: freeing a no-show's slot would let a late patient's slot be given away, and a past slot
is rarely requested again, so the simple rule is also the safe one.

**Holds.** With ``hold_ttl``, a request that has never been booked expires when it is decided
more than ``hold_ttl`` after it was made (``created_at``, or ``updated_at`` for a request
re-made after a rejection): it is rejected with reason ``expired``, so a terminal that was
offline for a day cannot take a slot the desk has meanwhile offered to someone else. A
reschedule of a booked reservation never expires (its booking stays).

**Index.** Booked slots are kept per resource in a list sorted by start (epoch seconds) with
the longest booked duration; the reservations overlapping a request are found by bisecting
``[start - longest, end)``, so one decision costs O(log n + overlaps) plus the pycrdt reads
and writes. :meth:`Decider.rebuild` reloads it from the document.

Nothing here does I/O or reads a clock: callers pass ``now``.
"""

from __future__ import annotations

import enum
import json
import logging
from bisect import bisect_left, insort
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from pycrdt import Map

from .calendar import Calendar
from .errors import InvalidReservation
from .model import (
    LIFECYCLE_MARKS,
    Decision,
    ReservationId,
    check_interval,
    check_resource_id,
    check_text,
    format_time,
    is_decided,
    parse_time,
)

log = logging.getLogger(__name__)

_SlotKey = tuple[str, int, int]  # (resource, start, end) in epoch seconds
_PAUSE_AT = 8  # queued reservations from which a decide call unsubscribes while it writes

FREEING_MARKS = ("cancelled_at", "entered_in_error_at")
"""Lifecycle marks that release a booked slot; every other mark keeps it occupied."""

_MARK_KEYS = tuple(key for key, _status in LIFECYCLE_MARKS)
# A change to any of these may change whether a reservation needs a decision or what it occupies.
_WATCHED_KEYS = frozenset(
    {"resource", "start", "end", "requested_at", "booked_resource", "booked_start", "booked_end", *_MARK_KEYS}
)


class RejectReason(enum.StrEnum):
    """Why the home relay rejected a request (stored in the reservation's ``reason``)."""

    CONFLICT = "conflict"
    EXPIRED = "expired"
    INVALID = "invalid"


@dataclass(frozen=True, slots=True)
class DecisionMade:
    """One decision written by :class:`Decider` (for logs, metrics and the terminal's answer)."""

    reservation_id: ReservationId
    outcome: Decision
    reason: str = ""
    conflict_with: str = ""


def needs_decision(fields: Mapping[str, Any]) -> bool:
    """True if the home relay has yet to decide the reservation's current request."""
    return not any(fields.get(key) for key in _MARK_KEYS) and not is_decided(fields)


class Decider:
    """Decides the booking requests of one calendar; held by the calendar's home relay.

    Args:
        calendar: the relay's calendar (its document receives every update of the calendar).
        relay_id: this relay's id; written to ``meta.home`` and to each decision's ``decided_by``.
        hold_ttl: if set, requests never booked expire after this long (reason ``expired``).

    Creating a Decider writes ``meta.home`` (if it differs), loads the index and starts
    queuing changes. Then, after applying updates, the relay calls :meth:`decide_queued`
    (and :meth:`decide_all_pending` once at start-up); never from inside a pycrdt observer
    or another transaction.
    """

    def __init__(self, calendar: Calendar, relay_id: str, hold_ttl: timedelta | None = None) -> None:
        self.calendar = calendar
        self.relay_id = check_text("actor", relay_id, required=True)
        self.hold_ttl = hold_ttl
        self.origin = ("decider", relay_id)
        self._slots: dict[str, _ResourceSlots] = {}
        self._occupied: dict[str, _SlotKey] = {}  # reservation id -> the slot it holds in the index
        self._queue: list[list[str]] = []  # batches of changed reservation ids, in arrival order
        calendar.set_home(relay_id)
        self.rebuild()
        self._subscription = calendar.reservations.observe_deep(self._on_change)

    def close(self) -> None:
        """Stop watching the document (the relay no longer decides this calendar)."""
        self.calendar.reservations.unobserve(self._subscription)

    @property
    def queued(self) -> int:
        """How many changed reservations wait for :meth:`decide_queued` (with repeats)."""
        return sum(len(batch) for batch in self._queue)

    def rebuild(self) -> None:
        """Reload the index of booked slots from the document (e.g. after a bulk load)."""
        self._load_index(self.calendar.all_fields())

    def decide_queued(self, now: datetime) -> list[DecisionMade]:
        """Decide every queued reservation that needs it, in arrival order; one transaction.

        Returns the decisions written (empty if none were needed).
        """
        batches, self._queue = self._queue, []
        if not batches:
            return []
        reservations = self.calendar.reservations
        made: list[DecisionMade] = []
        stamp = format_time(parse_time(now))
        with self._writing(pause_observer=sum(len(batch) for batch in batches) >= _PAUSE_AT):
            for batch in batches:
                found: list[tuple[str, dict[str, Any], Map[Any]]] = []
                for rid in dict.fromkeys(batch):
                    entry = reservations.get(rid)
                    fields = json.loads(str(entry)) if isinstance(entry, Map) else None
                    self._sync_slot(rid, fields)
                    if fields is not None and entry is not None and needs_decision(fields):
                        found.append((rid, fields, entry))
                found.sort(key=lambda item: (str(item[1].get("created_at", "")), item[0]))
                made.extend(self._decide_each(found, now, stamp))
        return made

    def decide_all_pending(self, now: datetime) -> list[DecisionMade]:
        """Rebuild the index and decide every reservation that needs it, oldest request first.

        For start-up (or after a home move): the order is ``(created_at, id)``.
        """
        self._queue.clear()
        everything = self.calendar.all_fields()
        self._load_index(everything)
        found = [(rid, fields) for rid, fields in everything.items() if needs_decision(fields)]
        found.sort(key=lambda item: (str(item[1].get("created_at", "")), item[0]))
        if not found:
            return []
        reservations = self.calendar.reservations
        with self._writing(pause_observer=len(found) >= _PAUSE_AT):
            return self._decide_each(
                ((rid, fields, reservations[rid]) for rid, fields in found), now, format_time(parse_time(now))
            )

    # ---- internals ----------------------------------------------------------------------------

    def _load_index(self, everything: Mapping[str, Mapping[str, Any]]) -> None:
        self._slots.clear()
        self._occupied.clear()
        for rid, fields in everything.items():
            self._sync_slot(rid, fields)

    def _on_change(self, events: list[Any]) -> None:
        # Inside a pycrdt observer: writing would raise, so only queue.
        batch: set[str] = set()
        for event in events:
            if event.transaction.origin == self.origin:
                continue  # our own decisions
            path = event.path
            if not path:
                batch.update(str(key) for key in event.keys)
            elif len(path) == 1 and not _WATCHED_KEYS.isdisjoint(event.keys):
                batch.add(str(path[0]))
        if batch:
            self._queue.append(sorted(batch))

    @contextmanager
    def _writing(self, *, pause_observer: bool) -> Iterator[None]:
        """One transaction for a decide call. For many decisions, with our observer off: pycrdt
        builds an event per changed map for every deep observer, which costs more than the writes
        (and subscribing again costs a signature inspection, so a single decision keeps it on)."""
        reservations = self.calendar.reservations
        if pause_observer:
            reservations.unobserve(self._subscription)
        try:
            with self.calendar.doc.transaction(origin=self.origin):
                yield
        finally:
            if pause_observer:
                self._subscription = reservations.observe_deep(self._on_change)

    def _decide_each(
        self, found: Iterable[tuple[str, dict[str, Any], Map[Any]]], now: datetime, stamp: str
    ) -> list[DecisionMade]:
        made = []
        for rid, fields, entry in found:
            decision, slot = self._decide(rid, fields, now)
            self._write(entry, fields, decision, stamp)
            if slot is not None:
                self._set_slot(rid, slot)
            made.append(decision)
            log.debug(  # the relay logs the INFO line per decision, with its connection context
                "booking decided",
                extra={
                    "calendar": self.calendar.name,
                    "reservation": rid,
                    "outcome": str(decision.outcome),
                    "reason": decision.reason,
                    "conflict_with": decision.conflict_with,
                },
            )
        return made

    def _decide(self, rid: str, fields: Mapping[str, Any], now: datetime) -> tuple[DecisionMade, _SlotKey | None]:
        """The decision about the current request, and the slot to occupy if it is booked."""
        reservation_id = ReservationId(rid)
        try:
            resource = check_resource_id(fields.get("resource"))  # type: ignore[arg-type]
            start_at, end_at = check_interval(fields.get("start"), fields.get("end"))  # type: ignore[arg-type]
        except InvalidReservation:
            return DecisionMade(reservation_id, Decision.REJECTED, RejectReason.INVALID), None
        if self.hold_ttl is not None and not fields.get("booked_start"):
            asked = fields.get("requested_at") or (
                fields.get("updated_at") if fields.get("decided_start") else fields.get("created_at"))
            try:
                expired = parse_time(str(asked)) + self.hold_ttl < parse_time(now)
            except InvalidReservation:
                expired = False
            if expired:
                return DecisionMade(reservation_id, Decision.REJECTED, RejectReason.EXPIRED), None
        start, end = int(start_at.timestamp()), int(end_at.timestamp())
        booked = DecisionMade(reservation_id, Decision.BOOKED), (resource, start, end)
        slots = self._slots.get(resource)
        if slots is None:
            return booked
        overlapping = slots.overlapping(start, end, exclude=rid)
        if len(overlapping) == 0:
            return booked
        capacity = self.calendar.capacity(resource)
        if len(overlapping) < capacity or _max_depth(overlapping, start, end) < capacity:
            return booked
        first = min(overlapping, key=lambda item: (item[0], item[2]))  # earliest start, then id
        return DecisionMade(reservation_id, Decision.REJECTED, RejectReason.CONFLICT, first[2]), None

    def _write(self, entry: Map[Any], fields: dict[str, Any], decision: DecisionMade, stamp: str) -> None:
        request = {"resource": fields.get("resource"), "start": fields.get("start"), "end": fields.get("end")}
        changes: dict[str, Any] = {
            "decision": str(decision.outcome),
            "decided_resource": request["resource"],
            "decided_start": request["start"],
            "decided_end": request["end"],
            "decided_by": self.relay_id,
            "decided_at": stamp,
            "decided_request": fields.get("requested_at", ""),
            "reason": str(decision.reason),
            "conflict_with": decision.conflict_with,
        }
        if decision.outcome is Decision.BOOKED:
            changes.update(booked_resource=request["resource"], booked_start=request["start"], booked_end=request["end"])
        for key, value in changes.items():
            if fields.get(key, "") != value:  # a missing reason/conflict_with reads as ""
                entry[key] = value
        fields.update(changes)

    def _sync_slot(self, rid: str, fields: Mapping[str, Any] | None) -> None:
        """Make the index hold exactly the slot this reservation occupies now (if any)."""
        self._set_slot(rid, _occupied_slot(fields))

    def _set_slot(self, rid: str, slot: _SlotKey | None) -> None:
        old = self._occupied.get(rid)
        if old == slot:
            return
        if old is not None:
            self._slots[old[0]].remove(old[1], old[2], rid)
            del self._occupied[rid]
        if slot is not None:
            slots = self._slots.get(slot[0])
            if slots is None:
                slots = self._slots[slot[0]] = _ResourceSlots()
            slots.add(slot[1], slot[2], rid)
            self._occupied[rid] = slot


class _ResourceSlots:
    """Booked intervals of one resource as ``(start_s, end_s, reservation id)``, sorted."""

    __slots__ = ("entries", "longest_s")

    def __init__(self) -> None:
        self.entries: list[tuple[int, int, str]] = []
        self.longest_s = 0

    def add(self, start: int, end: int, rid: str) -> None:
        insort(self.entries, (start, end, rid))
        self.longest_s = max(self.longest_s, end - start)  # never shrinks: a safe window bound

    def remove(self, start: int, end: int, rid: str) -> None:
        i = bisect_left(self.entries, (start, end, rid))
        if i < len(self.entries) and self.entries[i] == (start, end, rid):
            del self.entries[i]

    def overlapping(self, start: int, end: int, *, exclude: str) -> list[tuple[int, int, str]]:
        """Intervals sharing an instant with ``[start, end)``, except ``exclude``'s own."""
        entries = self.entries
        lo = bisect_left(entries, (start - self.longest_s,))
        hi = bisect_left(entries, (end,))
        return [item for item in entries[lo:hi] if item[1] > start and item[2] != exclude]


def _max_depth(intervals: list[tuple[int, int, str]], start: int, end: int) -> int:
    """The most of ``intervals`` overlapping at any one instant of ``[start, end)``."""
    events = []
    for item_start, item_end, _rid in intervals:
        events.append((max(item_start, start), 1))
        events.append((min(item_end, end), -1))
    events.sort()  # at equal times ends (-1) come first: intervals are half-open
    depth = deepest = 0
    for _time, step in events:
        depth += step
        deepest = max(deepest, depth)
    return deepest


def _occupied_slot(fields: Mapping[str, Any] | None) -> _SlotKey | None:
    """(resource, start_s, end_s) of the booked slot this reservation holds, or None."""
    if not fields or not fields.get("booked_start") or any(fields.get(key) for key in FREEING_MARKS):
        return None
    try:
        start = parse_time(str(fields["booked_start"]))
        end = parse_time(str(fields.get("booked_end", "")))
    except InvalidReservation:
        return None  # not written by a decider; ignore rather than crash the relay
    return str(fields.get("booked_resource", "")), int(start.timestamp()), int(end.timestamp())
