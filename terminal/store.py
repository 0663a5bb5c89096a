"""The terminal's own store: the SQLite file it keeps its calendars in, the catalog of which
calendars that file holds, the :class:`~accord.terminal.ledger.Ledger` of local changes, and the
calendars loaded from it (:class:`~accord.terminal.opened.OpenCalendar`). :class:`TerminalStore`
saves every change durably before the terminal reports or sends it: a local write is appended
and recorded as pending in the ledger, a remote update is appended like any other, and an ACK
from the relay marks local changes as stored there. It knows nothing of the network; the
:class:`~accord.terminal.client.Terminal` passes it what the link delivers.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Mapping, Set
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from accord.engine.calendar import Calendar
from accord.engine.errors import ReservationNotFound
from accord.engine.model import CalendarId, Reservation, ReservationId, parse_time
from accord.engine.protocol import decode_state_vector
from accord.engine.replica import Replica
from accord.engine.storage import CompactionPolicy, SqliteStorage, merge_log

from .errors import TerminalError
from .ledger import Ledger, LocalChange
from .opened import OpenCalendar
from .status import CalendarStatus, SyncState, is_decided

log = logging.getLogger(__name__)
T = TypeVar("T")

CALENDARS_KEY = "terminal/calendars"
PULLED_PREFIX = "terminal/pulled/"  # calendars this store has synced at least once
DEFAULT_STORE = "accord-terminal.sqlite"
NOT_RUNNING = "the terminal is not running: use `async with Terminal(...) as t:`"


@dataclass(frozen=True, slots=True)
class SavedWrite:
    """What one local write saved: the updates for the relay and the reservations they touched."""

    updates: tuple[bytes, ...]
    ids: tuple[ReservationId, ...]
    already_stored: tuple[ReservationId, ...]  # acknowledged before we recorded them (a shared store)


class TerminalStore:
    """The calendars a terminal holds, loaded from and saved to its SQLite file.

    Args:
        path: the SQLite file (created if missing).
        actor: who writes (``created_by``/``updated_by`` of local changes).
        has_relay: whether the terminal syncs with a relay; if so, a calendar never pulled from
            it shows its bookings as pending (a home relay may decide them).
        compaction: when to merge a calendar's stored log into one row on load.

    Call :meth:`open` once, :meth:`close` at the end.
    """

    def __init__(self, path: Path, actor: str, *, has_relay: bool, compaction: CompactionPolicy) -> None:
        self.path = path
        self.actor = actor
        self.has_relay = has_relay
        self.compaction = compaction
        self.calendars: dict[CalendarId, OpenCalendar] = {}
        self._storage: SqliteStorage | None = None
        self._ledger: Ledger | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        """Open the file and load every calendar it holds or was asked to hold before.

        Raises:
            StoreUnavailable: the file cannot be opened or is not an accord store.
            CorruptRecord: a stored update is damaged (nothing is changed).
        """
        self._storage = storage = await SqliteStorage.open(self.path)
        self._ledger = Ledger(storage)
        try:
            names = set(await storage.calendars()) | set(await self._known_calendars())
            for calendar in sorted(names):
                await self._load(CalendarId(calendar))
        except BaseException:
            await storage.close()
            raise

    async def close(self) -> None:
        """Unload the calendars, wait for the ledger's saves, close the file."""
        for opened in self.calendars.values():
            opened.close()
        self.calendars.clear()
        try:
            if self._ledger is not None:
                await self._ledger.flush()
        finally:
            if self._storage is not None:
                await self._storage.close()

    async def open_calendar(self, name: CalendarId) -> bool:
        """Load ``name`` (an empty calendar if the file has none) and remember it; False if already open."""
        if name in self.calendars:
            return False
        async with self._lock:
            if name in self.calendars:
                return False
            await self._load(name)
            known = set(await self._known_calendars())
            if name not in known:
                await self._require_storage().set_meta(CALENDARS_KEY, json.dumps(sorted(known | {name})))
            return True

    def calendar(self, name: CalendarId) -> OpenCalendar:
        """The open calendar ``name``. Raises ReservationNotFound if it is not open here."""
        opened = self.calendars.get(name)
        if opened is None:
            raise ReservationNotFound(f"calendar {name!r} is not open on this terminal")
        return opened

    # ---- saving changes ------------------------------------------------------------------------

    async def write(self, name: CalendarId, operation: Callable[[Calendar], T]) -> tuple[T, SavedWrite]:
        """Run ``operation`` on the open calendar, then save what it changed as pending.

        Raises whatever ``operation`` raises (nothing is saved then, unless it changed something
        before raising), and StorageError if the file could not save it.
        """
        opened = self.calendars[name]
        replica = opened.replica
        opened.take_touched()
        try:
            result = operation(replica.calendar)
        finally:
            changes = replica.take_changes()
            ids = opened.take_touched()
        if not changes:
            return result, SavedWrite((), ids, ())
        storage, ledger = self._require_storage(), self._require_ledger()
        client = replica.doc.client_id
        await ledger.note_client(name, client)  # before the append: see ledger.py on crash safety
        await storage.append_many([(name, change.update) for change in changes])
        already_stored = await ledger.record(
            name, [LocalChange(client, decode_state_vector(c.state_vector).get(client, 0), ids) for c in changes]
        )
        log.debug("saved local change", extra={"calendar": name, "reservations": len(ids)})
        return result, SavedWrite(tuple(c.update for c in changes), ids, _sorted_ids(already_stored))

    async def apply_remote(self, name: CalendarId, update: bytes) -> tuple[ReservationId, ...] | None:
        """Apply and save an update from the relay; the reservations it touched, None if it was redundant."""
        opened = self.calendars.get(name)
        if opened is None:
            log.debug("update for a calendar not open here", extra={"calendar": name})
            return None
        opened.take_touched()
        try:
            change = opened.replica.apply(update)
        finally:
            ids = opened.take_touched()
        if change is None:
            return None
        await self._require_storage().append(name, change.update)
        log.debug("stored remote change", extra={"calendar": name, "reservations": len(ids)})
        return ids

    async def acknowledge(self, name: CalendarId, clocks: dict[int, int], at: str) -> tuple[ReservationId, ...]:
        """The relay stored everything ``clocks`` covers (``name`` is open): the reservations it covered."""
        return _sorted_ids(await self._require_ledger().acknowledge(name, clocks, at))

    async def relay_state(self, name: CalendarId, clocks: dict[int, int]) -> bool:
        """The relay's state vector for ``name``: True if it holds less than it acknowledged."""
        return await self._require_ledger().regress(name, clocks)

    async def mark_pulled(self, name: CalendarId, at: str) -> None:
        """The relay's state of ``name`` arrived: from now on its statuses need no assumed home."""
        opened = self.calendars.get(name)
        if opened is not None and opened.replica.calendar.assume_home:
            opened.replica.calendar.assume_home = False  # the home record, if any, is here now
            await self._require_storage().set_meta(PULLED_PREFIX + name, at)

    # ---- reads without I/O ---------------------------------------------------------------------

    def peek(self, name: CalendarId, reservation_id: str) -> Reservation | None:
        """The reservation if ``name`` is open and holds it, else None."""
        opened = self.calendars.get(name)
        if opened is None or reservation_id not in opened.replica.calendar.reservations:
            return None
        return opened.replica.calendar.get(reservation_id)

    def snapshot(self, name: CalendarId) -> dict[str, Any]:
        """The open calendar's whole document as plain data; {} if not open."""
        opened = self.calendars.get(name)
        return opened.replica.calendar.to_py() if opened is not None else {}

    # ---- what the ledger says ------------------------------------------------------------------

    def pending(self, name: CalendarId) -> int:
        """Local changes of ``name`` the relay has not acknowledged (0 if not open)."""
        opened = self.calendars.get(name)
        if opened is None or self._ledger is None:
            return 0
        return self._ledger.get(name).pending_count(opened.replica.clocks())

    def statuses(self, pulled: Set[CalendarId], refused: Mapping[CalendarId, str]) -> tuple[CalendarStatus, ...]:
        """Each open calendar's pending count, given what the link pulled and which calendars the relay refused."""
        return tuple(
            CalendarStatus(name=name, pending=self.pending(name), pulled=name in pulled, refused=refused.get(name, ""))
            for name in sorted(self.calendars)
        )

    def is_acknowledged(self, name: CalendarId) -> bool:
        """True if the relay acknowledged every local change of the open calendar ``name``."""
        return self._require_ledger().get(name).covers(self.calendars[name].replica.clocks())

    def last_ack_at(self) -> datetime | None:
        """When the relay last acknowledged a change of any open calendar (None if never)."""
        ledger = self._ledger
        last = max((ledger.get(name).last_ack_at for name in self.calendars), default="") if ledger else ""
        return parse_time(last) if last else None

    def sync_state(self, name: CalendarId, reservation_id: str) -> SyncState:
        """How far the reservation's latest change got. Raises ReservationNotFound."""
        opened = self.calendar(name)
        reservation = opened.replica.calendar.get(reservation_id)
        if reservation_id in self._require_ledger().get(name).pending_ids(opened.replica.clocks()):
            return SyncState.LOCAL
        if opened.replica.calendar.home is not None and is_decided(reservation):
            return SyncState.DECIDED
        return SyncState.STORED

    # ---- internals -----------------------------------------------------------------------------

    async def _load(self, name: CalendarId) -> None:
        storage = self._require_storage()
        replica = Replica(name, actor=self.actor)
        rows, top = await storage.log_length(name)
        updates = await storage.load(name)  # after log_length: covers every row <= top
        replica.load(updates)
        if self.compaction.should_compact(rows):
            await storage.compact(name, top, merge_log(updates))
            log.info("compacted calendar log", extra={"calendar": name, "rows": rows})
        await self._require_ledger().load(name)
        # Never synced with a relay: a home relay may decide this calendar, so show bookings as
        # pending until we know. A terminal without a relay is standalone: a plain calendar.
        replica.calendar.assume_home = self.has_relay and await storage.get_meta(PULLED_PREFIX + name) is None
        self.calendars[name] = OpenCalendar(replica)

    async def _known_calendars(self) -> list[str]:
        text = await self._require_storage().get_meta(CALENDARS_KEY)
        try:
            names: object = json.loads(text) if text else []
        except ValueError:
            names = []
        return [n for n in names if isinstance(n, str)] if isinstance(names, list) else []

    def _require_storage(self) -> SqliteStorage:
        if self._storage is None:
            raise TerminalError(NOT_RUNNING)
        return self._storage

    def _require_ledger(self) -> Ledger:
        if self._ledger is None:
            raise TerminalError(NOT_RUNNING)
        return self._ledger


def _sorted_ids(ids: set[str]) -> tuple[ReservationId, ...]:
    return tuple(sorted(ReservationId(i) for i in ids))
