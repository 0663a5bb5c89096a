"""The terminal: an offline-first client of one relay, holding calendars in its own store.

Theory of operation. A :class:`Terminal` keeps one :class:`~accord.engine.replica.Replica` per
open calendar, loaded from its own SQLite store. A write (``book``, ``cancel``, ...) changes the
replica, appends the resulting update durably to the store and records it in the
:class:`~accord.terminal.ledger.Ledger` as *pending* before the call returns; it never waits
for the network. The :class:`~accord.terminal.link.Link` then sends it if the relay is
connected; otherwise the next connection's STEP1/STEP2 exchange carries it.

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
"""

from __future__ import annotations

import asyncio
import builtins
import contextlib
import json
import logging
import socket
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from accord.engine.calendar import Calendar
from accord.engine.errors import CloseCode, ReservationNotFound
from accord.engine.model import (
    CalendarId,
    Reservation,
    ReservationId,
    Status,
    check_calendar_name,
    format_time,
    parse_time,
)
from accord.engine.protocol import decode_state_vector
from accord.engine.replica import Replica
from accord.engine.storage import CompactionPolicy, SqliteStorage, merge_log

from .changes import ChangeKind, ChangeNotice, ChangeStream
from .conflicts import HOLDING, Conflict, find_conflicts
from .errors import AmbiguousId, DecisionTimeout, RelayRefused, RelayUnreachable, SyncTimeout, TerminalError
from .ledger import Ledger, LocalChange
from .link import Backoff, Link, LinkState
from .opened import OpenCalendar
from .status import CalendarStatus, SyncState, TerminalStatus, is_decided

log = logging.getLogger(__name__)

CALENDARS_KEY = "terminal/calendars"
PULLED_PREFIX = "terminal/pulled/"  # calendars this store has synced at least once
DEFAULT_STORE = "accord-terminal.sqlite"
MIN_ID_FRAGMENT = 4

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

    Raises (on entering):
        StoreUnavailable: the store cannot be opened or is not an accord store.
        CorruptRecord: a stored update is damaged (nothing is changed; see ``accord store check``).
        ValueError: ``relay`` is not a ws:// or wss:// URL.
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
    ) -> None:
        self.relay = relay
        self.store_path = Path(store).expanduser()
        self.token = token
        self.name = (name or default_name())[:64]
        self.connect_timeout_s = connect_timeout_s
        self.backoff = backoff
        self.clock = clock or (lambda: datetime.now(UTC))
        self.compaction = compaction or CompactionPolicy()
        self._store: SqliteStorage | None = None
        self._ledger: Ledger | None = None
        self.link: Link | None = None
        self._open: dict[CalendarId, OpenCalendar] = {}
        self._open_lock = asyncio.Lock()
        self._signal = asyncio.Event()
        self._callbacks: list[Callable[[ChangeNotice], None]] = []
        self._streams: set[ChangeStream] = set()
        self._running = False
        self._closed = False

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
            link = Link(
                self.relay,
                self,
                token=self.token,
                name=self.name,
                connect_timeout_s=self.connect_timeout_s,
                backoff=self.backoff,
            )  # raises ValueError for a bad URL before anything is opened
        self._store = await SqliteStorage.open(self.store_path)
        self._ledger = Ledger(self._store)
        try:
            names = set(await self._store.calendars()) | set(await self._known_calendars())
            for calendar in sorted(names):
                await self._load(CalendarId(calendar))
        except BaseException:
            await self._store.close()
            raise
        self._running = True
        log.info("terminal started", extra={"terminal": self.name, "calendars": len(self._open)})
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
        for stream in builtins.list(self._streams):
            stream.end()
        for opened in self._open.values():
            opened.close()
        self._open.clear()
        try:
            if self._ledger is not None:
                await self._ledger.flush()
        finally:
            if self._store is not None:
                await self._store.close()
        self._wake()
        log.info("terminal closed", extra={"terminal": self.name})

    # ---- calendars ---------------------------------------------------------------------------

    async def open(self, calendar: str) -> CalendarId:
        """Open ``calendar`` (loading it from the store, subscribing at the relay); returns its id.

        Raises:
            InvalidCalendarName: not a valid calendar name.
        """
        name = check_calendar_name(calendar)
        self._check_running()
        if name not in self._open:
            async with self._open_lock:
                if name not in self._open:
                    await self._load(name)
                    await self._remember_calendar(name)
                    if self.link is not None:
                        self.link.open_calendar(name, self._open[name].replica.state_vector())
        return name

    def calendars(self) -> builtins.list[CalendarId]:
        """The open calendars, sorted."""
        return sorted(self._open)

    async def _load(self, name: CalendarId) -> None:
        store = self._require_store()
        replica = Replica(name, actor=self.name)
        rows, top = await store.log_length(name)
        updates = await store.load(name)  # after log_length: covers every row <= top
        replica.load(updates)
        if self.compaction.should_compact(rows):
            await store.compact(name, top, merge_log(updates))
            log.info("compacted calendar log", extra={"calendar": name, "rows": rows})
        assert self._ledger is not None
        await self._ledger.load(name)
        # Never synced with a relay: a home relay may decide this calendar, so show bookings as
        # pending until we know. A terminal without a relay is standalone: a plain calendar.
        replica.calendar.assume_home = bool(self.relay) and await store.get_meta(PULLED_PREFIX + name) is None
        self._open[name] = OpenCalendar(replica)

    async def _known_calendars(self) -> builtins.list[str]:
        text = await self._require_store().get_meta(CALENDARS_KEY)
        try:
            names: object = json.loads(text) if text else []
        except ValueError:
            names = []
        return [n for n in names if isinstance(n, str)] if isinstance(names, builtins.list) else []

    async def _remember_calendar(self, name: CalendarId) -> None:
        known = set(await self._known_calendars())
        if name not in known:
            await self._require_store().set_meta(CALENDARS_KEY, json.dumps(sorted(known | {name})))

    # ---- writes ------------------------------------------------------------------------------

    async def book(
        self,
        calendar: str,
        *,
        resource: str,
        start: datetime | str,
        end: datetime | str,
        patient: str,
        service: str = "",
        note: str = "",
    ) -> Reservation:
        """Request a reservation; saved locally at once, sent to the relay when connected.

        Where the calendar has a home relay the result is ``pending`` until the home decides
        (see :meth:`decision`); otherwise it is ``booked``.

        Raises:
            InvalidReservation: a field is missing or invalid (the message says which).
            StorageError: the store could not save it.
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

    async def edit(
        self,
        calendar: str,
        reservation_id: str,
        *,
        note: str | None = None,
        service: str | None = None,
        patient: str | None = None,
    ) -> Reservation:
        """Change descriptive fields (only those given). Raises ReservationNotFound, InvalidReservation."""
        return await self._write(
            calendar, lambda cal, now: cal.edit(reservation_id, note=note, service=service, patient=patient, now=now)
        )

    async def _write(self, calendar: str, operation: Callable[[Calendar, datetime], Reservation]) -> Reservation:
        name = await self.open(calendar)
        opened = self._open[name]
        replica = opened.replica
        opened.take_touched()
        try:
            reservation = operation(replica.calendar, self.clock())
        finally:
            changes = replica.take_changes()
            ids = opened.take_touched()
        if not changes:
            return reservation
        store, ledger = self._require_store(), self._require_ledger()
        client = replica.doc.client_id
        await ledger.note_client(name, client)  # before the append: see ledger.py on crash safety
        await store.append_many([(name, change.update) for change in changes])
        already_stored = await ledger.record(
            name, [LocalChange(client, decode_state_vector(c.state_vector).get(client, 0), ids) for c in changes]
        )
        log.debug("saved local change", extra={"calendar": name, "reservations": len(ids)})
        if self.link is not None:
            for change in changes:
                self.link.send_update(name, change.update)
        self._publish(ChangeNotice(name, ids, ChangeKind.LOCAL))
        if already_stored:
            self._publish(ChangeNotice(name, tuple(sorted(ReservationId(i) for i in already_stored)), ChangeKind.STORED))
        return reservation

    # ---- reads -------------------------------------------------------------------------------

    async def get(self, calendar: str, reservation_id: str) -> Reservation:
        """The reservation as this terminal sees it now. Raises ReservationNotFound."""
        name = await self.open(calendar)
        return self._open[name].replica.calendar.get(reservation_id)

    async def list(
        self,
        calendar: str,
        resource: str | None = None,
        between: tuple[datetime | str, datetime | str] | None = None,
        statuses: Iterable[Status] | None = None,
    ) -> builtins.list[Reservation]:
        """Reservations sorted by start, optionally filtered by resource, time window and status."""
        name = await self.open(calendar)
        return self._open[name].replica.calendar.list(resource=resource, between=between, statuses=statuses)

    async def conflicts(
        self,
        calendar: str,
        resource: str | None = None,
        between: tuple[datetime | str, datetime | str] | None = None,
    ) -> builtins.list[Conflict]:
        """Bookings overlapping beyond their resource's capacity (possible in calendars without a home)."""
        name = await self.open(calendar)
        cal = self._open[name].replica.calendar
        # Until a home is known, pending bookings are what a plain calendar would book: count them.
        holding = HOLDING if cal.home is not None else HOLDING | {Status.PENDING}
        return find_conflicts(cal.list(resource=resource, between=between), cal.capacity, holding=holding)

    async def resolve(self, calendar: str, fragment: str) -> ReservationId:
        """The full id of the reservation whose id is, starts with or ends with ``fragment``.

        Raises:
            ReservationNotFound: no reservation matches.
            AmbiguousId: several match; give more characters.
        """
        name = await self.open(calendar)
        keys = [str(k) for k in self._open[name].replica.calendar.reservations]
        text = fragment.strip().lower()
        if text in keys:
            return ReservationId(text)
        matches = (
            sorted(k for k in keys if k.startswith(text) or k.endswith(text)) if len(text) >= MIN_ID_FRAGMENT else []
        )
        if len(matches) == 1:
            return ReservationId(matches[0])
        if matches:
            shown = ", ".join(matches[:5])
            raise AmbiguousId(f"id {fragment!r} matches {len(matches)} reservations ({shown}); give more characters")
        raise ReservationNotFound(
            f"no reservation {fragment!r} in calendar {name!r} on this terminal; "
            "check the id (see `accord terminal list`), or sync and try again"
        )

    def sync_state(self, calendar: str, reservation_id: str) -> SyncState:
        """How far the reservation's latest change got (see :class:`SyncState`).

        Raises:
            ReservationNotFound: the calendar is not open here or has no such reservation.
        """
        opened = self._open.get(CalendarId(calendar))
        if opened is None:
            raise ReservationNotFound(f"calendar {calendar!r} is not open on this terminal")
        reservation = opened.replica.calendar.get(reservation_id)
        if reservation_id in self._require_ledger().get(opened.replica.name).pending_ids(opened.replica.clocks()):
            return SyncState.LOCAL
        if opened.replica.calendar.home is not None and is_decided(reservation):
            return SyncState.DECIDED
        return SyncState.STORED

    # ---- waiting -----------------------------------------------------------------------------

    async def wait_connected(self, timeout: float = 2.0) -> LinkState:
        """Wait until the link is online or its first connection attempt failed; return its state.

        Returns ``offline`` at once when no relay is configured, and the current state
        (``connecting``) when the deadline passes first.
        """
        link = self.link
        if link is None:
            return LinkState.OFFLINE

        def concluded() -> LinkState | None:
            if link.state in (LinkState.ONLINE, LinkState.REFUSED):
                return link.state
            return link.state if link.attempts > 0 and link.state is LinkState.OFFLINE else None

        try:
            return await self._wait_until(concluded, timeout)
        except TimeoutError:
            return link.state

    async def wait_link_change(self, state: LinkState, timeout: float) -> LinkState:
        """Wait until the link's state differs from ``state``; return the current state (also at the deadline)."""
        link = self.link
        if link is None:
            return LinkState.OFFLINE
        try:
            return await self._wait_until(lambda: link.state if link.state is not state else None, timeout)
        except TimeoutError:
            return link.state

    async def synced(self, timeout: float = 10.0, calendars: Iterable[str] | None = None) -> None:
        """Wait until the relay has durably acknowledged every local change and the initial
        pull of every open calendar (or of ``calendars``) is done on the current connection.

        Raises:
            RelayUnreachable: no relay configured, or not connected when the deadline passed.
            RelayRefused: the relay refused this terminal or one of the calendars.
            SyncTimeout: connected, but the relay did not catch up in time.
        """
        link = self.link
        if link is None:
            raise RelayUnreachable("no relay configured: pass relay=... (CLI: --relay or ACCORD_RELAY)")
        names = [await self.open(c) for c in calendars] if calendars is not None else None

        def done() -> bool | None:
            if link.state is LinkState.REFUSED:
                raise RelayRefused(
                    f"relay {self.relay} refused this terminal: {link.last_error}; "
                    "check the token (CLI: --token or ACCORD_TOKEN)",
                    link.refused_code or CloseCode.UNAUTHORIZED,
                )
            wanted = names if names is not None else list(self._open)
            for name in wanted:
                if name in link.refused_calendars:
                    raise RelayRefused(
                        f"relay {self.relay} refused calendar {name!r}: {link.refused_calendars[name]}; "
                        "check the calendar name, or ask for a token that covers it",
                        CloseCode.FORBIDDEN,
                    )
            if link.state is not LinkState.ONLINE:
                return None
            for name in wanted:
                opened = self._open.get(name)
                if opened is None or name not in link.pulled:
                    return None
                if not self._require_ledger().get(name).covers(opened.replica.clocks()):
                    return None
            return True

        try:
            await self._wait_until(done, timeout)
        except TimeoutError:
            pending = self.status().pending
            if link.state is not LinkState.ONLINE:
                raise RelayUnreachable(
                    f"relay {self.relay} is unreachable ({link.last_error or 'no connection yet'}); "
                    f"{pending} local change(s) are saved here and will sync when it is back"
                ) from None
            raise SyncTimeout(
                f"relay {self.relay} did not acknowledge {pending} local change(s) within {timeout:g} s; "
                "they are saved here; try again or raise --timeout"
            ) from None

    async def decision(self, calendar: str, reservation_id: str, timeout: float = 10.0) -> Reservation:
        """Wait until the home relay decided the reservation's current request; return it.

        Returns at once for calendars without a home once the relay's state was pulled (there
        every live request counts as booked).

        Raises:
            ReservationNotFound: no such reservation here.
            DecisionTimeout: no decision before the deadline (the relay or home may be offline).
        """
        name = await self.open(calendar)
        self._open[name].replica.calendar.get(reservation_id)  # raises ReservationNotFound early

        def decided() -> Reservation | None:
            opened = self._open.get(name)
            if opened is None:
                raise TerminalError("the terminal was closed while waiting for a decision")
            reservation = opened.replica.calendar.get(reservation_id)
            if opened.replica.calendar.home is None:
                # Without a known home the status is final only once we know the relay's state.
                pulled = self.link is None or name in self.link.pulled
                return reservation if pulled else None
            return reservation if is_decided(reservation) else None

        try:
            return await self._wait_until(decided, timeout)
        except TimeoutError:
            raise DecisionTimeout(
                f"reservation {reservation_id} was not decided within {timeout:g} s; it stays requested: "
                "check later with `accord terminal show`"
            ) from None

    async def wait_for(self, check: Callable[[], T], timeout: float) -> T:
        """Re-evaluate ``check`` whenever anything changes (a write, an update from the relay, an
        ACK, the link state) until it returns a truthy value; return that value.

        ``check`` must not block; use :meth:`peek` and :meth:`snapshot` inside it.

        Raises:
            TimeoutError: ``check`` stayed falsy until the deadline.
        """

        def truthy() -> T | None:
            value = check()
            return value if value else None

        return await self._wait_until(truthy, timeout)

    def peek(self, calendar: str, reservation_id: str) -> Reservation | None:
        """The reservation if ``calendar`` is open here and holds it, else None (no I/O: for :meth:`wait_for`)."""
        opened = self._open.get(CalendarId(calendar))
        if opened is None or reservation_id not in opened.replica.calendar.reservations:
            return None
        return opened.replica.calendar.get(reservation_id)

    def snapshot(self, calendar: str) -> dict[str, Any]:
        """The open calendar's whole document as plain data (for comparing replicas); {} if not open."""
        opened = self._open.get(CalendarId(calendar))
        return opened.replica.calendar.to_py() if opened is not None else {}

    async def _wait_until(self, check: Callable[[], T | None], timeout: float) -> T:
        """Re-run ``check`` on every change until it returns a value; TimeoutError at the deadline."""
        async with asyncio.timeout(timeout):
            while True:
                signal = self._signal  # taken before checking, so no wake-up is missed
                if self._closed:
                    raise TerminalError("the terminal is closed")
                result = check()
                if result is not None:
                    return result
                await signal.wait()

    def _wake(self) -> None:
        self._signal.set()
        self._signal = asyncio.Event()

    # ---- status and observers ----------------------------------------------------------------

    def status(self) -> TerminalStatus:
        """A snapshot: link state, pending local changes, last ACK time, per-calendar detail."""
        ledger = self._ledger
        calendars = []
        last_ack = ""
        for name, opened in sorted(self._open.items()):
            entry = ledger.get(name) if ledger is not None else None
            pending = entry.pending_count(opened.replica.clocks()) if entry is not None else 0
            if entry is not None:
                last_ack = max(last_ack, entry.last_ack_at)
            calendars.append(
                CalendarStatus(
                    name=name,
                    pending=pending,
                    pulled=self.link is not None and name in self.link.pulled,
                    refused=self.link.refused_calendars.get(name, "") if self.link is not None else "",
                )
            )
        return TerminalStatus(
            name=self.name,
            relay=self.relay,
            link=self.link.state if self.link is not None else LinkState.OFFLINE,
            pending=sum(c.pending for c in calendars),
            last_ack_at=parse_time(last_ack) if last_ack else None,
            last_error=self.link.last_error if self.link is not None else "",
            calendars=tuple(calendars),
        )

    def on_change(self, callback: Callable[[ChangeNotice], None]) -> Callable[[], None]:
        """Call ``callback`` (on the event loop, synchronously) for every change; returns an unsubscribe function."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def changes(self, max_queued: int = 1000) -> ChangeStream:
        """A stream of change notices from now on (subscribed at once, before the first ``await``).

        Use ``async for notice in t.changes():``; it ends when the terminal closes, or call
        ``close()`` on it (it is also an async context manager). A consumer more than
        ``max_queued`` notices behind gets one ``overflow`` notice instead of the dropped ones
        and should re-read what it shows.
        """
        return ChangeStream(self._streams, max_queued, closed=self._closed)

    def _publish(self, notice: ChangeNotice) -> None:
        self._wake()
        if not notice.reservation_ids and notice.kind is not ChangeKind.OVERFLOW:
            return
        for callback in builtins.list(self._callbacks):
            try:
                callback(notice)
            except Exception:  # an observer's bug must not break sync
                log.exception("change observer failed")
        for stream in builtins.list(self._streams):
            stream.put(notice)

    # ---- LinkHandler (called by the link) ----------------------------------------------------

    def link_calendars(self) -> builtins.list[CalendarId]:
        return sorted(self._open)

    def link_state_vector(self, calendar: CalendarId) -> bytes:
        state_vector: bytes = self._open[calendar].replica.state_vector()
        return state_vector

    def link_diff(self, calendar: CalendarId, state_vector: bytes) -> bytes | None:
        opened = self._open.get(calendar)
        return opened.replica.diff(state_vector) if opened is not None else None

    async def link_update(self, calendar: CalendarId, update: bytes) -> None:
        opened = self._open.get(calendar)
        if opened is None:
            log.debug("update for a calendar not open here", extra={"calendar": calendar})
            return
        opened.take_touched()
        try:
            change = opened.replica.apply(update)
        finally:
            ids = opened.take_touched()
        if change is None:
            return
        await self._require_store().append(calendar, change.update)
        log.debug("stored remote change", extra={"calendar": calendar, "reservations": len(ids)})
        self._publish(ChangeNotice(calendar, ids, ChangeKind.REMOTE))

    async def link_acknowledged(self, calendar: CalendarId, clocks: dict[int, int]) -> None:
        if calendar not in self._open:
            return
        covered = await self._require_ledger().acknowledge(calendar, clocks, format_time(self.clock()))
        ids = tuple(sorted(ReservationId(i) for i in covered))
        self._publish(ChangeNotice(calendar, ids, ChangeKind.STORED))

    async def link_pulled(self, calendar: CalendarId) -> None:
        opened = self._open.get(calendar)
        if opened is not None and opened.replica.calendar.assume_home:
            opened.replica.calendar.assume_home = False  # meta.home, if any, is here now
            await self._require_store().set_meta(PULLED_PREFIX + calendar, format_time(self.clock()))

    def link_event(self) -> None:
        self._wake()

    # ---- internals ---------------------------------------------------------------------------

    def _check_running(self) -> None:
        if not self._running:
            raise TerminalError("the terminal is not running: use `async with Terminal(...) as t:`")

    def _require_store(self) -> SqliteStorage:
        if self._store is None:
            raise TerminalError("the terminal is not running: use `async with Terminal(...) as t:`")
        return self._store

    def _require_ledger(self) -> Ledger:
        if self._ledger is None:
            raise TerminalError("the terminal is not running: use `async with Terminal(...) as t:`")
        return self._ledger


def default_name() -> str:
    """The host name (what ``--as`` defaults to)."""
    return (socket.gethostname() or "terminal")[:64]


__all__ = [
    "ChangeKind",
    "ChangeNotice",
    "ChangeStream",
    "LinkState",
    "SyncState",
    "Terminal",
    "TerminalStatus",
]
