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

**Holds.** With a hold TTL (the calendar's ``meta.hold_ttl`` setting, else the Decider's
``hold_ttl``), a request that has never been booked expires when it is decided more than the
TTL after it first reached a relay, by that relay's clock (its earliest receipt: see
:mod:`engine.receipts`; terminal clocks are not trusted for this): it is rejected with reason
``expired``, so a request that waited at a relay cut off from the home cannot take a slot the
desk has meanwhile offered to someone else. A request without a receipt is as old as the
home's own clock says: it never expired. A reschedule of a booked reservation never expires
(its booking stays).

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
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from pycrdt import Map

from .authority import (
    HomeRecord,
    RelayKey,
    Verdict,
    Verifier,
    first_home,
    request_digest,
    reservation_of,
    verdict_digest,
)
from .calendar import Calendar
from .errors import InvalidReservation, NotHome
from .model import (
    LIFECYCLE_MARKS,
    Decision,
    DecisionState,
    ReservationId,
    check_interval,
    check_resource_id,
    check_text,
    format_time,
    parse_time,
)
from .receipts import ReceiptIndex
from .slot_index import ResourceSlots, max_depth

log = logging.getLogger(__name__)

_SlotKey = tuple[str, int, int]  # (resource, start, end) in epoch seconds

FREEING_MARKS = ("cancelled_at", "entered_in_error_at")
"""Lifecycle marks that release a booked slot; every other mark keeps it occupied."""

_MARK_KEYS = tuple(key for key, _status in LIFECYCLE_MARKS)
# A change to any of these may change whether a reservation needs a decision or what it occupies.
_WATCHED_KEYS = frozenset({"resource", "start", "end", "requested_at", *_MARK_KEYS})


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


def needs_decision(fields: Mapping[str, Any], decided: DecisionState) -> bool:
    """True if the home relay has yet to decide the reservation's current request."""
    return not any(key in fields for key in _MARK_KEYS) and decided.current is None and not decided.released


def needs_release(fields: Mapping[str, Any], decided: DecisionState) -> bool:
    """True if the reservation holds a slot and was cancelled (or entered in error) since."""
    return decided.booked is not None and not decided.released and any(key in fields for key in FREEING_MARKS)


class Decider:
    """Decides the booking requests of one calendar; held by the calendar's home relay.

    Args:
        calendar: the relay's calendar (its document receives every update of the calendar).
        relay_id: this relay's id; named in its home record and in each verdict.
        key: this relay's signing key; every verdict is signed with it.
        hold_ttl: if set, requests never booked expire after this long (reason ``expired``).
        sink: where verdicts are written: the calendar's own ``verdicts`` map by default; a relay
            passes the ``verdicts`` map of a separate document, stores what it captures there and
            only then applies it to the calendar, so that no decision is seen before it is durable
            (apply it with origin :attr:`origin`).
        last_signed: ``(epoch, serial, digest)`` of the last verdict the caller's process signed
            for this calendar, if it knows (a relay keeps :attr:`last_signed` across Deciders): the
            next verdict of that epoch gets the next serial and names it as ``previous``.
            Otherwise the next after the highest in the calendar.

    Creating a Decider takes the calendar (writes the epoch-1 home record) if it has no home
    yet, loads the index and starts queuing changes. Then, after applying updates, the relay
    calls :meth:`decide_queued` (and :meth:`decide_all_pending` once at start-up); never from
    inside a pycrdt observer or another transaction.

    Raises:
        NotHome: the calendar's recorded home is another relay (or another key).
    """

    def __init__(self, calendar: Calendar, relay_id: str, key: RelayKey, hold_ttl: timedelta | None = None,
                 *, sink: Map[Any] | None = None, last_signed: tuple[int, int, str] | None = None) -> None:
        self.calendar = calendar
        self.relay_id = check_text("actor", relay_id, required=True)
        self.key = key
        self.hold_ttl = hold_ttl
        self.origin = ("decider", relay_id)
        self._slots: dict[str, ResourceSlots] = {}
        self._occupied: dict[str, _SlotKey] = {}  # reservation id -> the slot it holds in the index
        self._queue: list[list[str]] = []  # batches of changed reservation ids, in arrival order
        self._built: tuple[dict[str, dict[str, Any]], dict[str, DecisionState]] | None = None  # see rebuild
        # Decisions not yet in the calendar's verdicts, by reservation: (request digest, state, entry
        # key). The calendar catches up when the verdict is applied there (at once, or after the
        # relay stored it when verdicts go to a separate sink); until then decisions read these.
        self._fresh: dict[str, tuple[str, DecisionState, str]] = {}
        self.sink = sink if sink is not None else calendar.verdicts
        if calendar.home_record is None:
            calendar.add_home_record(*first_home(calendar.name, self.relay_id, key))
        self.epoch = self._check_home()
        # Serials number this home's verdicts of its epoch in signing order, never twice: what
        # a takeover may adopt (engine/authority.py). The relay signs, stores and fences in that order.
        if last_signed is not None and last_signed[0] == self.epoch:
            _epoch, self.serial, self.previous = last_signed
        else:
            self.serial, self.previous = max(((v.serial, verdict_digest(text)) for text, v in calendar.genuine_verdicts()
                                              if v.epoch == self.epoch), default=(0, ""))
        if self.epoch > 1 and calendar.home_record.adopts is None:  # type: ignore[union-attr]
            self._carry_over()  # (a record that adopts keeps every genuine verdict of the previous epoch)
        self.receipts = ReceiptIndex(calendar.receipts)
        self.rebuild()
        self._subscriptions = (calendar.reservations.observe_deep(self._on_change),
                               calendar.verdicts.observe(self._on_verdicts))

    def _check_home(self) -> int:
        home = self.calendar.home_record
        assert home is not None
        if home.relay_id != self.relay_id or home.public_key != self.key.public:
            raise NotHome(self.calendar.name, home.relay_id, home.epoch)
        return home.epoch

    def _carry_over(self) -> None:
        """After a handover, sign again what the previous home decided, so that no decision is
        lost or taken again in another order. (Verdicts the previous home signs after the
        handover record are fenced out: it is no longer home, and nothing carries them over.)"""
        previous = self.calendar.home_chain()[-2]
        with self._writing():
            plan = carry_over_plan(self.calendar, skip_decided=True)
            for rid, again, current in carried_over(self.calendar.name, plan, previous, self.relay_id, self.epoch):
                self._store(rid, again, current=current)

    @property
    def last_signed(self) -> tuple[int, int, str]:
        """``(epoch, serial, digest)`` of this Decider's last verdict (see the constructor)."""
        return self.epoch, self.serial, self.previous

    def still_home(self) -> bool:
        """False once the calendar's records name another home (a merge with another home's
        records, or a handover): the relay stops deciding; this Decider's verdicts no longer count."""
        try:
            return self._check_home() == self.epoch
        except NotHome:
            return False

    def close(self) -> None:
        """Stop watching the document (the relay no longer decides this calendar)."""
        self.calendar.reservations.unobserve(self._subscriptions[0])
        self.calendar.verdicts.unobserve(self._subscriptions[1])
        self.receipts.close()

    @property
    def queued(self) -> int:
        """How many changed reservations wait for :meth:`decide_queued` (with repeats)."""
        return sum(len(batch) for batch in self._queue)

    def rebuild(self) -> None:
        """Reload the index of booked slots from the document (e.g. after a bulk load)."""
        everything = self.calendar.all_fields()
        # Kept for a decide_all_pending right after (start-up): a second pass over a large calendar
        # would cost as much again; any change or decision in between drops it.
        self._built = (everything, self._load_index(everything))

    def decide_queued(self, now: datetime) -> list[DecisionMade]:
        """Decide every queued reservation that needs it, in arrival order; one transaction.

        Returns the decisions written (empty if none were needed).
        """
        batches, self._queue = self._queue, []
        if not batches:
            return []
        self._built = None
        reservations = self.calendar.reservations
        made: list[DecisionMade] = []
        stamp = format_time(parse_time(now))
        with self._writing():
            for batch in batches:
                found: list[tuple[str, dict[str, Any], DecisionState]] = []
                for rid in dict.fromkeys(batch):
                    entry = reservations.get(rid)
                    if not isinstance(entry, Map):
                        continue
                    fields = _fields(entry)
                    if fields is None:
                        continue
                    decided = self._state(rid, fields)
                    self._sync_slot(rid, fields, decided)
                    if _needs_writing(fields, decided):
                        found.append((rid, fields, decided))
                found.sort(key=lambda item: (str(item[1].get("created_at", "")), item[0]))
                made.extend(self._decide_each(found, now, stamp))
        return made

    def decide_all_pending(self, now: datetime) -> list[DecisionMade]:
        """Rebuild the index and decide every reservation that needs it, oldest request first.

        For start-up (or after a home move): the order is ``(created_at, id)``.
        """
        self._queue.clear()
        built, self._built = self._built, None
        if built is not None:
            everything, states = built
        else:
            everything = self.calendar.all_fields()
            states = self._load_index(everything)
        found = [(rid, fields, states[rid]) for rid, fields in everything.items() if _needs_writing(fields, states[rid])]
        found.sort(key=lambda item: (str(item[1].get("created_at", "")), item[0]))
        if not found:
            return []
        with self._writing():
            return self._decide_each(found, now, format_time(parse_time(now)))

    # ---- internals ----------------------------------------------------------------------------

    def _load_index(self, everything: Mapping[str, dict[str, Any]]) -> dict[str, DecisionState]:
        self._slots.clear()
        self._occupied.clear()
        states = {}
        for rid, fields in everything.items():
            decided = states[rid] = self._state(rid, fields)
            self._sync_slot(rid, fields, decided)
        return states

    def _on_change(self, events: list[Any]) -> None:
        # Inside a pycrdt observer: writing would raise, so only queue.
        self._built = None
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

    def _state(self, rid: str, fields: Mapping[str, Any]) -> DecisionState:
        fresh = self._fresh.get(rid)
        if fresh is None:
            return self.calendar.decision_state(rid, dict(fields))
        digest, state, _key = fresh
        if digest == request_digest(rid, fields):
            return state
        return DecisionState(None, state.booked, state.released, seq=state.seq)  # re-requested since

    def _on_verdicts(self, event: Any) -> None:
        """A verdict written elsewhere (e.g. one of ours re-pushed after a restore) may change
        what a reservation occupies: look at it again."""
        self._built = None
        if event.transaction.origin == self.origin:  # our own verdicts arriving: the calendar has them now
            for key in event.keys:
                rid = reservation_of(str(key))
                fresh = self._fresh.get(rid)
                if fresh is not None and fresh[2] == key:
                    del self._fresh[rid]
            return
        rids = sorted({reservation_of(str(key)) for key in event.keys})
        if rids:
            self._queue.append(rids)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """One transaction for a decide call (verdicts go to the ``verdicts`` map, so the deep
        observer on reservations does not see them)."""
        with self.sink.doc.transaction(origin=self.origin):
            yield

    def _decide_each(
        self, found: Iterable[tuple[str, dict[str, Any], DecisionState]], now: datetime, stamp: str
    ) -> list[DecisionMade]:
        made = []
        for rid, fields, decided in found:
            if needs_release(fields, decided):
                decision, slot = DecisionMade(ReservationId(rid), Decision.RELEASED), None
            else:
                try:
                    decision, slot = self._decide(rid, fields, decided, now)
                except (ValueError, TypeError, OverflowError, InvalidReservation):  # one bad value: reject that one
                    log.warning("reservation with unusable values rejected", extra={"reservation": rid})
                    decision, slot = DecisionMade(ReservationId(rid), Decision.REJECTED, RejectReason.INVALID), None
            self._write(rid, fields, decided, decision, stamp)
            self._set_slot(rid, slot if slot is not None else self._kept_slot(fields, decided, decision))
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

    @staticmethod
    def _kept_slot(fields: Mapping[str, Any], decided: DecisionState, decision: DecisionMade) -> _SlotKey | None:
        """The slot a reservation still holds after a decision that booked nothing new."""
        if decision.outcome is Decision.RELEASED:
            return None
        return _occupied_slot(fields, decided)

    def _decide(self, rid: str, fields: Mapping[str, Any], decided: DecisionState,
                now: datetime) -> tuple[DecisionMade, _SlotKey | None]:
        """The decision about the current request, and the slot to occupy if it is booked."""
        reservation_id = ReservationId(rid)
        try:
            resource = check_resource_id(fields.get("resource"))  # type: ignore[arg-type]
            start_at, end_at = check_interval(fields.get("start"), fields.get("end"))  # type: ignore[arg-type]
        except InvalidReservation:
            return DecisionMade(reservation_id, Decision.REJECTED, RejectReason.INVALID), None
        hold_ttl = self.calendar.hold_ttl or self.hold_ttl
        if hold_ttl is not None and decided.booked is None:
            received = self.receipts.earliest(rid, request_digest(rid, fields))
            moment = parse_time(now)
            if received is not None and min(received, moment) + hold_ttl < moment:
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
        if len(overlapping) < capacity or max_depth(overlapping, start, end) < capacity:
            return booked
        first = min(overlapping, key=lambda item: (item[0], item[2]))  # earliest start, then id
        return DecisionMade(reservation_id, Decision.REJECTED, RejectReason.CONFLICT, first[2]), None

    def _write(self, rid: str, fields: Mapping[str, Any], decided: DecisionState, decision: DecisionMade,
               stamp: str) -> None:
        """Sign the decision and store it as a new, set-once verdict entry."""
        if decision.outcome is Decision.BOOKED:
            booked: tuple[str, str, str] | None = (str(fields.get("resource", "")), str(fields.get("start", "")),
                                                   str(fields.get("end", "")))
        elif decision.outcome is Decision.REJECTED:
            booked = decided.booked  # a rejected reschedule keeps the booking it had
        else:
            booked = None
        verdict = Verdict(self.calendar.name, rid, request_digest(rid, fields), str(decision.outcome), booked,
                          str(decision.reason), decision.conflict_with, self.relay_id, self.epoch, stamp,
                          decided.seq + 1)
        self._store(rid, verdict, current=True)

    def _store(self, rid: str, verdict: Verdict, *, current: bool) -> None:
        """Sign ``verdict`` (numbered with the next serial), write it to the sink, and remember it
        until the calendar has it (``current``: it decides the reservation's request as it stands now)."""
        self.serial += 1
        verdict = replace(verdict, serial=self.serial, previous=self.previous)
        encoded = verdict.sign(self.key)
        self.previous = verdict_digest(encoded)
        entry_key = verdict.entry_key(encoded)
        self.sink[entry_key] = encoded
        self._fresh[rid] = (verdict.request, DecisionState(
            Decision(verdict.outcome) if current else None, verdict.booked, verdict.outcome == Decision.RELEASED,
            verdict.reason, verdict.conflict_with, verdict.relay_id, verdict.seq), entry_key)

    def _sync_slot(self, rid: str, fields: Mapping[str, Any] | None, decided: DecisionState) -> None:
        """Make the index hold exactly the slot this reservation occupies now (if any)."""
        self._set_slot(rid, _occupied_slot(fields, decided))

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
                slots = self._slots[slot[0]] = ResourceSlots()
            slots.add(slot[1], slot[2], rid)
            self._occupied[rid] = slot


CarryOver = list[tuple[str, dict[str, Any], list[tuple[str, str]]]]
"""What a handover carries over: each reservation's id, fields and verdict entries."""


def carry_over_plan(calendar: Calendar, *, skip_decided: bool) -> CarryOver:
    """The reservations whose verdicts a new home may have to sign again (read from the document:
    on the event loop). ``skip_decided``: leave out reservations the calendar's current home has
    decided already (the calendar holds the new epoch's record); without it, the caller is about
    to write that record itself, in the same update as the verdicts (a relay cluster's takeover)."""
    plan: CarryOver = []
    for rid, fields in calendar.all_fields().items():
        entries = calendar.verdicts_of(rid)
        if entries and not (skip_decided and calendar.decision_state(rid, fields).seq):
            plan.append((rid, fields, entries))
    return plan


def carried_over(calendar: str, plan: CarryOver, previous: HomeRecord, relay_id: str,
                 epoch: int) -> list[tuple[str, Verdict, bool]]:
    """The verdicts a new home (``relay_id`` at ``epoch``) signs again after a handover from
    ``previous``: each reservation's latest verdict genuine under ``previous``, as ``(reservation
    id, verdict, current)`` (``current``: it decides the request as it stands; serial 0: the
    signer numbers them). Touches no document or shared cache, so it may run in a worker thread
    (PyNaCl releases the GIL)."""
    verifier = Verifier(calendar)
    carried = []
    for rid, fields, entries in plan:
        found = [v for v, _signer, valid in verifier.check_all(entries, previous).values() if v is not None and valid]
        if found:
            last = max(found, key=lambda v: v.seq)
            again = replace(last, relay_id=relay_id, epoch=epoch, seq=last.seq + 1, serial=0, previous="")
            carried.append((rid, again, again.request == request_digest(rid, fields)))
    return carried


_Entries = dict[int, list[tuple[str, str, Verdict]]]  # one epoch's opened verdict entries, by serial


def adoption_point(calendar: Calendar) -> int | None:
    """Up to which serial the next epoch's record may adopt the current home's verdicts
    (:func:`~accord.engine.authority.handover`'s ``adopts``): the highest serial among the
    genuine verdicts of the current epoch, when every serial from 1 up to it is there, linked by
    digest (:func:`~accord.engine.authority.verdict_digest`) down from the highest one, whose
    signature is checked. None when one is missing or a genuine verdict has no serial: the new
    home must sign them again instead. Forged entries cost one signature check each and fill no gap.

    The verdicts so linked need no signature check of their own: the calendar's verifier
    remembers them as checked, and those of the earlier epochs the current home adopted too
    (one check per epoch), so the new home's first pass over the calendar checks nothing.

    The caller must hold every verdict the current home stored (a relay cluster's new holder,
    caught up after its lease epoch fenced the old one out)."""
    home = calendar.home_record
    if home is None:
        return None
    verifier = calendar.verifier
    by_epoch: dict[int, _Entries] = {}
    for key, text in calendar.verdict_entries():
        verdict = verifier.opened(key, text)
        if verdict is not None:
            by_epoch.setdefault(verdict.epoch, {}).setdefault(verdict.serial, []).append((key, text, verdict))
    for adopted in home.earlier:
        linked = _chain(calendar, by_epoch.get(adopted.epoch, {}), adopted.upto)
        if linked:
            verifier.vouch(linked, adopted.public_key)
    current = by_epoch.get(home.epoch, {})
    if any(verifier.verify(key, text, home) is not None for key, text, _verdict in current.get(0, ())):
        return None  # from before serials
    highest = max(current, default=0)
    if highest == 0:
        return 0
    linked = _chain(calendar, current, highest)
    if linked is None:
        return None
    verifier.vouch(linked, home.public_key)
    return len(linked)


def _chain(calendar: Calendar, entries: _Entries, upto: int) -> list[tuple[str, str]] | None:
    """The ``(key, text)`` of one epoch's verdicts 1..n linked by digest down from its highest
    genuine one (serial n <= ``upto``), or None if a link is missing."""
    home = calendar.home_record
    verify = calendar.verifier.verify
    top = next((entry for serial in sorted(entries, reverse=True) if 0 < serial <= upto for entry in entries[serial]
                if verify(entry[0], entry[1], home) is not None), None)
    if top is None:
        return None
    chain = [top]
    for serial in range(top[2].serial - 1, 0, -1):
        wanted = chain[-1][2].previous
        link = next((entry for entry in entries.get(serial, ()) if verdict_digest(entry[1]) == wanted), None)
        if link is None:
            return None
        chain.append(link)
    if chain[-1][2].previous:
        return None  # serial 1 names no predecessor
    return [(key, text) for key, text, _verdict in chain]


def _needs_writing(fields: Mapping[str, Any], decided: DecisionState) -> bool:
    """True if the home owes this reservation a verdict: a decision, or a release."""
    return needs_decision(fields, decided) or needs_release(fields, decided)


def _fields(entry: Map[Any]) -> dict[str, Any] | None:
    data = json.loads(str(entry))
    return data if isinstance(data, dict) else None


def _occupied_slot(fields: Mapping[str, Any] | None, decided: DecisionState) -> _SlotKey | None:
    """(resource, start_s, end_s) of the booked slot this reservation holds, or None."""
    if not fields or decided.booked is None or decided.released or any(key in fields for key in FREEING_MARKS):
        return None
    resource, start_text, end_text = decided.booked
    try:
        start, end = parse_time(start_text), parse_time(end_text)
    except InvalidReservation:
        return None  # signed by the home, so this cannot happen; never crash the relay on it
    return resource, int(start.timestamp()), int(end.timestamp())
