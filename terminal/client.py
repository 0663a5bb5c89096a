"""The terminal: an offline-first client of one relay, holding calendars in its own store.

Theory of operation. A :class:`Terminal` keeps one :class:`~accord.engine.replica.Replica` per
open calendar, loaded from its own SQLite store. A write (``book``, ``cancel``, ...) is made on
a draft of the calendar, its update appended durably to the store, and only then applied to the
replica and recorded in the :class:`~accord.terminal.ledger.Ledger` as *pending*, all before
the call returns; it never waits for the network. A write the store could not save raises
``StorageError`` and leaves nothing behind (see :mod:`.store`): trying again books once.
The :class:`~accord.terminal.link.Link` then sends it if the relay is connected; otherwise the
next connection's STEP1/STEP2 exchange carries it.

Updates from the relay are applied, stored in the same store (so a restart offline still
shows them) and reported to observers (:meth:`Terminal.on_change`, :meth:`Terminal.changes`).
The relay's ACKs mark local changes as stored on the relay. Each local change thus goes
through three states, reported per reservation by :meth:`Terminal.sync_state`:
``local`` (saved here), ``stored`` (acknowledged by the relay) and ``decided`` (the calendar's
home relay booked or rejected the current request).

Usage::

    async with Terminal(relay="ws://127.0.0.1:8765", store="desk-1.sqlite", name="desk-1") as t:
        r = await t.book("clinic-1", resource="room-1", start="2026-12-01T09:00Z",
                         end="2026-12-01T09:30Z", patient="P-0042")
        await t.synced(timeout=5)            # stored on the relay
        r = await t.decision("clinic-1", r.id, timeout=5)   # booked or rejected by the home

The terminal coordinates its parts: :mod:`.store` (SQLite file, loaded calendars, ledger),
:mod:`.link` (relay connection), :mod:`.waits` (what the waits wait for), :mod:`.changes`
(observers), :mod:`.ids` (short ids).
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from accord.engine.calendar import Calendar
from accord.engine.errors import CloseCode
from accord.engine.model import CalendarId, Reservation, ReservationId, Resource, Status, check_calendar_name, format_time
from accord.engine.protocol import DEFAULT_MAX_MESSAGE_BYTES, decode_state_vector
from accord.engine.slots import ComputedSlot, OpeningHours, compute_slots, holds_on, open_intervals, zone_of
from accord.engine.storage import CompactionPolicy

from . import waits
from .changes import ChangeFeed, ChangeKind, ChangeNotice, ChangeStream
from .conflicts import Conflict, calendar_conflicts
from .errors import RelayUnreachable, TerminalError
from .ids import resolve_id
from .link import Backoff, Link, LinkState
from .status import SyncState, TerminalStatus
from .store import DEFAULT_STORE, TerminalStore

log = logging.getLogger(__name__)

T = TypeVar("T")


class Terminal:
    """An offline-first client holding calendars in its own store and syncing with one relay.

    Args:
        relay: relay URL (``ws://host:port``), or None to work offline only.
        store: path of the terminal's SQLite store (created if missing).
        token: bearer token for the relay, or None.
        name: who writes (``created_by``/``updated_by``), at most 64 characters; default: host name.
        connect_timeout_s: deadline of one connection attempt.
        backoff: reconnect delays (default: 0.25 s doubling up to 30 s, with jitter).
        clock: returns "now" (UTC, aware); injected in tests.
        compaction: when to merge a calendar's stored log into one row on open.
        max_message_bytes: the largest message accepted from the relay (default 8 MiB, the
            relay's default too); syncs larger than an eighth of it go in pieces that size.
        ca_file: for a ``wss://`` relay, trust only the CA certificates in this PEM file (a
            private CA); default: the system's CA store.

    Raises (on entering):
        StoreUnavailable: the store cannot be opened or is not an accord store.
        CorruptRecord: a stored update is damaged (nothing is changed; see ``accord store check``).
        ValueError: ``relay`` is not a ws:// or wss:// URL.
        AccordError: ``ca_file`` cannot be read.
    """

    def __init__(
        self,
        relay: str | None = None,
        store: str | Path = DEFAULT_STORE,
        token: str | None = None,
        name: str | None = None,
        *,
        connect_timeout_s: float = 2.0,
        backoff: Backoff | None = None,
        clock: Callable[[], datetime] | None = None,
        compaction: CompactionPolicy | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
        ca_file: str | Path | None = None,
    ) -> None:
        self.relay = relay
        self.ca_file = ca_file
        self.store_path = Path(store).expanduser()
        self.token = token
        self.name = (name or default_name())[:64]
        self.connect_timeout_s = connect_timeout_s
        self.backoff = backoff
        self.clock = clock or (lambda: datetime.now(UTC))
        self.compaction = compaction or CompactionPolicy()
        self.max_message_bytes = max_message_bytes
        self.link: Link | None = None
        self._store = TerminalStore(self.store_path, self.name, has_relay=bool(relay), compaction=self.compaction)
        self._wakeup = waits.Wakeup()
        self._feed = ChangeFeed()
        self._running = False
        self._closed = False
        self._holding: set[CalendarId] = set()  # calendars being put on hold (a refusal was seen)
        self._tasks: set[asyncio.Task[None]] = set()

    # ---- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> Terminal:
        await self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    async def start(self) -> None:
        """Open the store, load every calendar it holds, start the link (if a relay is set)."""
        if self._running or self._closed:
            raise TerminalError("a Terminal can be started once; create a new one")
        link = None
        if self.relay:
            # Raises ValueError for a bad URL (AccordError for a bad CA file) before anything is opened.
            link = Link(self.relay, self, token=self.token, name=self.name,
                        connect_timeout_s=self.connect_timeout_s, backoff=self.backoff,
                        max_message_bytes=self.max_message_bytes, ca_file=self.ca_file)
        await self._store.open()
        self._running = True
        log.info("terminal started", extra={"terminal": self.name, "calendars": len(self._store.calendars)})
        if link is not None:
            self.link = link
            link.start()

    async def close(self) -> None:
        """Close the link, end change streams, flush and close the store. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._running = False
        if self.link is not None:
            await self.link.close()
        if self._tasks:  # a hold being saved finishes first: the refusal must not be forgotten
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._feed.end()
        await self._store.close()
        self._wakeup.close()
        log.info("terminal closed", extra={"terminal": self.name})

    # ---- calendars ---------------------------------------------------------------------------

    async def open(self, calendar: str) -> CalendarId:
        """Open ``calendar`` (loading it from the store, subscribing at the relay); returns its id.

        Raises:
            InvalidCalendarName: not a valid calendar name.
        """
        name = check_calendar_name(calendar)
        if not self._running:
            raise TerminalError("the terminal is not running: use `async with Terminal(...) as t:`")
        if await self._store.open_calendar(name) and self.link is not None:
            self.link.open_calendar(name, self._store.calendars[name].replica.state_vector())
        return name

    def calendars(self) -> list[CalendarId]:
        """The open calendars, sorted."""
        return sorted(self._store.calendars)

    # ---- writes ------------------------------------------------------------------------------

    async def book(
        self, calendar: str, *, resource: str, start: datetime | str, end: datetime | str, patient: str,
        service: str = "", note: str = "",
    ) -> Reservation:
        """Request a reservation; saved locally at once, sent to the relay when connected.

        Where the calendar has a home relay the result is ``pending`` until the home decides
        (see :meth:`decision`); otherwise it is ``booked``.

        Raises:
            InvalidReservation: a field is missing or invalid (the message says which).
            StorageError: the store could not save it (e.g. the disk is full:
                ``TransientStorageError``); nothing of it is kept, so try again later.
        """
        return await self._write(
            calendar,
            lambda cal, now: cal.book(
                resource=resource, start=start, end=end, patient=patient, service=service, note=note, now=now
            ),
        )

    async def reschedule(
        self, calendar: str, reservation_id: str, *, start: datetime | str, end: datetime | str, resource: str | None = None
    ) -> Reservation:
        """Ask for a new time (and optionally resource). Raises ReservationNotFound, InvalidTransition."""
        return await self._write(
            calendar, lambda cal, now: cal.reschedule(reservation_id, start=start, end=end, resource=resource, now=now)
        )

    async def cancel(self, calendar: str, reservation_id: str, reason: str = "") -> Reservation:
        """Cancel (the record stays). Raises ReservationNotFound, InvalidTransition."""
        return await self._write(calendar, lambda cal, now: cal.cancel(reservation_id, reason=reason, now=now))

    async def check_in(self, calendar: str, reservation_id: str) -> Reservation:
        """The patient arrived (only a booked reservation). Raises ReservationNotFound, InvalidTransition."""
        return await self._write(calendar, lambda cal, now: cal.check_in(reservation_id, now=now))

    async def no_show(self, calendar: str, reservation_id: str) -> Reservation:
        """The patient did not come (a booked reservation). Raises ReservationNotFound, InvalidTransition."""
        return await self._write(calendar, lambda cal, now: cal.no_show(reservation_id, now=now))

    async def fulfil(self, calendar: str, reservation_id: str) -> Reservation:
        """The visit took place (booked or checked in). Raises ReservationNotFound, InvalidTransition."""
        return await self._write(calendar, lambda cal, now: cal.fulfil(reservation_id, now=now))

    async def entered_in_error(self, calendar: str, reservation_id: str, reason: str = "") -> Reservation:
        """The reservation should never have existed (the record stays, marked). Raises
        ReservationNotFound, InvalidTransition."""
        return await self._write(calendar, lambda cal, now: cal.mark_entered_in_error(reservation_id, reason=reason,
                                                                                      now=now))

    async def edit(
        self, calendar: str, reservation_id: str, *, note: str | None = None, service: str | None = None,
        patient: str | None = None,
    ) -> Reservation:
        """Change descriptive fields (only those given). Raises ReservationNotFound, InvalidReservation."""
        return await self._write(
            calendar, lambda cal, now: cal.edit(reservation_id, note=note, service=service, patient=patient, now=now)
        )

    async def put_resource(self, calendar: str, resource_id: str, *, name: str = "", capacity: int = 1) -> Resource:
        """Declare or change a resource (name, capacity 1-1000). Relays with a token file accept
        it only from an ``admin`` token (anyone else is closed with 4403).

        Raises:
            InvalidReservation: a bad id, name or capacity.
        """
        return await self._write(calendar, lambda cal, _now: cal.put_resource(resource_id, name=name, capacity=capacity))

    async def set_hold_ttl(self, calendar: str, seconds: int | None) -> None:
        """Set (None: remove) the calendar's hold TTL, whole seconds 60 to 30 days; relays with a
        token file accept it only from an ``admin`` token.

        Raises:
            InvalidReservation: a value out of range.
        """
        await self._write(calendar, lambda cal, _now: cal.set_hold_ttl(seconds))

    async def hold_ttl(self, calendar: str) -> timedelta | None:
        """The calendar's hold TTL setting, None if it has none."""
        name = await self.open(calendar)
        return self._store.calendars[name].replica.calendar.hold_ttl

    async def set_time_zone(self, calendar: str, name: str | None) -> None:
        """Set (None: remove) the zone desks show the calendar in (an IANA name); an admin
        setting, like :meth:`set_hold_ttl`."""
        await self._write(calendar, lambda cal, _now: cal.set_time_zone(name))

    async def time_zone(self, calendar: str) -> str | None:
        """The calendar's time zone setting, None if it has none."""
        name = await self.open(calendar)
        return self._store.calendars[name].replica.calendar.time_zone

    async def resources(self, calendar: str) -> list[Resource]:
        """The calendar's declared resources, sorted by id."""
        name = await self.open(calendar)
        return self._store.calendars[name].replica.calendar.resources()

    async def set_opening_hours(self, calendar: str, resource_id: str, *, weekly: object = None,
                                exceptions: object = None, clear: bool = False) -> OpeningHours:
        """Set a declared resource's weekly opening hours and/or dated exceptions (see
        :mod:`accord.engine.slots`); an admin setting, like :meth:`set_hold_ttl`.

        Raises:
            InvalidReservation: the resource is not declared, or the schedule does not parse.
        """
        return await self._write(calendar, lambda cal, _now: cal.set_opening_hours(
            resource_id, weekly=weekly, exceptions=exceptions, clear=clear))

    async def free_slots(self, calendar: str, resource_id: str, lo: datetime, hi: datetime) -> list[ComputedSlot]:
        """The resource's open time in ``[lo, hi)`` cut into free, busy-tentative and busy
        stretches, as this terminal sees the calendar (see :func:`accord.engine.slots.compute_slots`).

        Raises:
            InvalidReservation: the window is longer than the search limit.
        """
        name = await self.open(calendar)
        cal = self._store.calendars[name].replica.calendar
        intervals = open_intervals(cal.opening_hours(resource_id), zone_of(cal.time_zone), lo, hi)
        holds = holds_on(cal.list(resource=resource_id, between=(lo, hi)), resource_id)
        return compute_slots(resource_id, intervals, holds, cal.capacity(resource_id))

    async def _write(self, calendar: str, operation: Callable[[Calendar, datetime], T]) -> T:
        name = await self.open(calendar)
        result, saved = await self._store.write(name, lambda cal: operation(cal, self.clock()))
        if not saved.updates:
            return result
        if self.link is not None and not self._store.held(name):  # a held calendar's changes stay here
            for update in saved.updates:
                self.link.send_update(name, update)
        self._publish(ChangeNotice(name, saved.ids, ChangeKind.LOCAL))
        if saved.already_stored:
            self._publish(ChangeNotice(name, saved.already_stored, ChangeKind.STORED))
        return result

    # ---- reads -------------------------------------------------------------------------------

    async def get(self, calendar: str, reservation_id: str) -> Reservation:
        """The reservation as this terminal sees it now. Raises ReservationNotFound."""
        name = await self.open(calendar)
        return self._store.calendars[name].replica.calendar.get(reservation_id)

    async def reservations(
        self, calendar: str, resource: str | None = None, between: tuple[datetime | str, datetime | str] | None = None,
        statuses: Iterable[Status] | None = None,
    ) -> list[Reservation]:
        """Reservations sorted by start, optionally filtered by resource, time window and status."""
        name = await self.open(calendar)
        return self._store.calendars[name].replica.calendar.list(resource=resource, between=between, statuses=statuses)

    async def conflicts(
        self, calendar: str, resource: str | None = None, between: tuple[datetime | str, datetime | str] | None = None
    ) -> list[Conflict]:
        """Bookings overlapping beyond their resource's capacity (possible in calendars without a home)."""
        name = await self.open(calendar)
        return calendar_conflicts(self._store.calendars[name].replica.calendar, resource, between)

    async def resolve(self, calendar: str, fragment: str) -> ReservationId:
        """The full id of the reservation whose id is, starts with or ends with ``fragment``.

        Raises:
            ReservationNotFound: no reservation matches.
            AmbiguousId: several match; give more characters.
        """
        name = await self.open(calendar)
        return resolve_id(name, self._store.calendars[name].replica.calendar.reservations, fragment)

    def sync_state(self, calendar: str, reservation_id: str) -> SyncState:
        """How far the reservation's latest change got (see :class:`SyncState`).

        Raises:
            ReservationNotFound: the calendar is not open here or has no such reservation.
        """
        return self._store.sync_state(CalendarId(calendar), reservation_id)

    def peek_time_zone(self, calendar: str) -> str | None:
        """The time zone setting of an open calendar (no I/O)."""
        held = self._store.calendars.get(CalendarId(calendar))
        return held.replica.calendar.time_zone if held is not None else None

    def peek_has_reservations(self, calendar: str) -> bool:
        """True if an open calendar holds any reservation (no I/O)."""
        held = self._store.calendars.get(CalendarId(calendar))
        return held is not None and len(held.replica.calendar.reservations) > 0

    def peek(self, calendar: str, reservation_id: str) -> Reservation | None:
        """The reservation if ``calendar`` is open here and holds it, else None (no I/O: for :meth:`wait_for`)."""
        return self._store.peek(CalendarId(calendar), reservation_id)

    def snapshot(self, calendar: str) -> dict[str, Any]:
        """The open calendar's whole document as plain data (for comparing replicas); {} if not open."""
        return self._store.snapshot(CalendarId(calendar))

    # ---- waiting -----------------------------------------------------------------------------

    async def wait_connected(self, timeout: float = 2.0) -> LinkState:
        """Wait until the link is online or its first connection attempt failed; return its state.

        Returns ``offline`` at once when no relay is configured, and the current state
        (``connecting``) when the deadline passes first.
        """
        return await waits.link_concluded(self._wakeup, self.link, timeout)

    async def wait_link_change(self, state: LinkState, timeout: float) -> LinkState:
        """Wait until the link's state differs from ``state``; return the current state (also at the deadline)."""
        return await waits.link_changed(self._wakeup, self.link, state, timeout)

    async def synced(self, timeout: float = 10.0, calendars: Iterable[str] | None = None) -> None:
        """Wait until the relay has durably acknowledged every local change and the initial
        pull of every open calendar (or of ``calendars``) is done on the current connection.

        Raises:
            RelayUnreachable: no relay configured, or not connected when the deadline passed.
            RelayRefused: the relay refused this terminal or one of the calendars.
            SyncTimeout: connected, but the relay did not catch up in time.
        """
        if self.link is None:
            raise RelayUnreachable("no relay configured: pass relay=... (CLI: --relay or ACCORD_RELAY)")
        names = [await self.open(c) for c in calendars] if calendars is not None else None
        await waits.all_synced(self._wakeup, self.relay, self.link, self._store, names, timeout)

    async def decision(self, calendar: str, reservation_id: str, timeout: float = 10.0) -> Reservation:
        """Wait until the home relay decided the reservation's current request; return it.

        Returns at once for calendars without a home once the relay's state was pulled (there
        every live request counts as booked).

        Raises:
            ReservationNotFound: no such reservation here.
            DecisionTimeout: no decision before the deadline (the relay or home may be offline).
        """
        name = await self.open(calendar)
        return await waits.decided(self._wakeup, self.link, self._store, name, reservation_id, timeout)

    async def wait_for(self, check: Callable[[], T], timeout: float) -> T:
        """Re-evaluate ``check`` whenever anything changes (a write, an update from the relay, an
        ACK, the link state) until it returns a truthy value; return that value.

        ``check`` must not block; use :meth:`peek` and :meth:`snapshot` inside it.

        Raises:
            TimeoutError: ``check`` stayed falsy until the deadline.
        """
        return await self._wakeup.until(lambda: check() or None, timeout)

    # ---- status and observers ----------------------------------------------------------------

    def status(self) -> TerminalStatus:
        """A snapshot: link state, pending local changes, last ACK time, per-calendar detail."""
        link = self.link
        calendars = self._store.statuses(link.pulled if link else set(), link.refused_calendars if link else {})
        return TerminalStatus(
            name=self.name,
            relay=self.relay,
            link=link.state if link is not None else LinkState.OFFLINE,
            pending=sum(c.pending for c in calendars),
            last_ack_at=self._store.last_ack_at(),
            last_error=link.last_error if link is not None else "",
            calendars=calendars,
        )

    def on_change(self, callback: Callable[[ChangeNotice], None]) -> Callable[[], None]:
        """Call ``callback`` (on the event loop, synchronously) for every change; returns an unsubscribe function."""
        return self._feed.subscribe(callback)

    def changes(self, max_queued: int = 1000) -> ChangeStream:
        """A stream of change notices from now on (subscribed at once, before the first ``await``).

        Use ``async for notice in t.changes():``; it ends when the terminal closes, or call
        ``close()`` on it (it is also an async context manager). A consumer more than
        ``max_queued`` notices behind gets one ``overflow`` notice instead of the dropped ones
        and should re-read what it shows.
        """
        return self._feed.stream(max_queued, closed=self._closed)

    def _publish(self, notice: ChangeNotice) -> None:
        self._wakeup.wake()
        self._feed.publish(notice)

    # ---- LinkHandler (called by the link) ----------------------------------------------------

    def link_calendars(self) -> list[CalendarId]:
        return [name for name in self.calendars() if not self._store.held(name)]

    def link_state_vector(self, calendar: CalendarId) -> bytes:
        state_vector: bytes = self._store.calendars[calendar].replica.state_vector()
        return state_vector

    def link_diff(self, calendar: CalendarId, state_vector: bytes) -> bytes | None:
        opened = self._store.calendars.get(calendar)
        return opened.replica.diff(state_vector) if opened is not None else None

    async def link_update(self, calendar: CalendarId, update: bytes) -> None:
        ids = await self._store.apply_remote(calendar, update)
        if ids is not None:
            self._publish(ChangeNotice(calendar, ids, ChangeKind.REMOTE))

    async def link_acknowledged(self, calendar: CalendarId, clocks: dict[int, int]) -> None:
        if calendar in self._store.calendars:
            ids = await self._store.acknowledge(calendar, clocks, format_time(self.clock()))
            self._publish(ChangeNotice(calendar, ids, ChangeKind.STORED))

    async def link_relay_state(self, calendar: CalendarId, state_vector: bytes) -> None:
        if calendar in self._store.calendars and await self._store.relay_state(calendar, decode_state_vector(state_vector)):
            log.warning("relay holds less than it acknowledged (restored from an older copy?); sending it again",
                        extra={"calendar": calendar})
            self._wakeup.wake()

    async def link_pulled(self, calendar: CalendarId) -> None:
        await self._store.mark_pulled(calendar, format_time(self.clock()))

    def link_event(self) -> None:
        self._wakeup.wake()
        link = self.link
        if link is None:
            return
        refused = dict(link.refused_calendars)
        if link.state is LinkState.REFUSED and link.refused_code == CloseCode.FORBIDDEN:
            refused.update(dict.fromkeys(self.calendars(), link.last_error))  # every write of this connection
        for name, reason in refused.items():
            if name in self._store.calendars and self._store.pending(name) and not self._store.held(name) \
                    and name not in self._holding:
                self._holding.add(name)
                task = asyncio.create_task(self._hold(name, reason), name=f"hold:{name}")
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _hold(self, name: CalendarId, reason: str) -> None:
        """The relay refused this calendar's local changes: keep them here, visibly, and stop
        syncing the calendar, so that they never go out later under other credentials unasked."""
        try:
            await self._store.hold(name, reason, format_time(self.clock()))
            log.warning("relay refused local changes; they stay on this terminal until retried or discarded",
                        extra={"calendar": name, "pending": self._store.pending(name)})
        finally:
            self._holding.discard(name)
            self._wakeup.wake()

    # ---- refused local changes -------------------------------------------------------------------

    def status_of(self, calendar: str) -> int:
        """How many local changes of an open calendar the relay has not acknowledged (no I/O)."""
        name = check_calendar_name(calendar)
        return self._store.pending(name) if name in self._store.calendars else 0

    def held(self, calendar: str) -> str:
        """Why the relay refused the calendar's local changes, "" if it did not. A held calendar
        is not synced: its changes stay on this terminal until :meth:`retry` or :meth:`discard`."""
        return self._store.held(check_calendar_name(calendar))

    async def retry(self, calendar: str) -> None:
        """Sync a held calendar again: its local changes go out with this terminal's token."""
        name = await self.open(calendar)
        await self._store.release(name, format_time(self.clock()))
        if self.link is not None:
            self.link.open_calendar(name, self._store.calendars[name].replica.state_vector())

    async def discard(self, calendar: str) -> int:
        """Drop the calendar's local changes the relay has not stored (it is emptied here and
        pulled from the relay again); returns how many were dropped."""
        name = await self.open(calendar)
        dropped = await self._store.discard_local(name, format_time(self.clock()))
        if self.link is not None:
            self.link.open_calendar(name, self._store.calendars[name].replica.state_vector())
        return dropped


def default_name() -> str:
    """The host name (what ``--as`` defaults to)."""
    return (socket.gethostname() or "terminal")[:64]


__all__ = [
    "DEFAULT_STORE",
    "ChangeKind",
    "ChangeNotice",
    "ChangeStream",
    "LinkState",
    "SyncState",
    "Terminal",
    "TerminalStatus",
]
