"""The terminal's own store: the SQLite file it keeps its calendars in, the catalog of which
calendars that file holds, the :class:`~accord.terminal.ledger.Ledger` of local changes, and the
calendars loaded from it (:class:`~accord.terminal.opened.OpenCalendar`). :class:`TerminalStore`
saves every change durably before the terminal reports or sends it: a local write is appended
and recorded as pending in the ledger, a remote update is appended like any other, and an ACK
from the relay marks local changes as stored there. It knows nothing of the network; the
:class:`~accord.terminal.client.Terminal` passes it what the link delivers.

Nothing unstored stays in memory. A pycrdt document cannot take a change back, so a local
write runs on a *draft*: a second document of the calendar (made on the first write, kept in
step with every update the replica takes) with its own client id. The draft's update is
appended to the file first and only then applied to the replica, which is all that the link
and the readers see. If the append fails (disk full, I/O error: ``StorageError``), the draft
is dropped and the replica never had the change: the caller is told, nothing goes out on the
next sync, and a retry books once. The next draft gets a fresh client id, so the failed
change's ids are never reused for different content (the file may hold it after all, e.g. an
fsync that failed after the write). Writes to one calendar take turns (a lock), and a caller
cancelled while its write is being saved does not cancel the save: what reaches the file
reaches the replica. A remote update that fails to store is taken out of the replica again
(it is reloaded from the file), so the next sync asks the relay for it once more.
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
from accord.engine.errors import ReservationNotFound, StorageError
from accord.engine.model import CalendarId, Reservation, ReservationId, parse_time
from accord.engine.protocol import EMPTY_UPDATE, decode_state_vector
from accord.engine.replica import Change, Replica
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
        self._drafts: dict[CalendarId, Replica] = {}  # where local writes run before they are stored
        self._write_locks: dict[CalendarId, asyncio.Lock] = {}
        self._writes: set[asyncio.Task[Any]] = set()  # running writes (they outlive a cancelled caller)

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
        """Finish running writes, unload the calendars, wait for the ledger's saves, close the file."""
        if self._writes:
            await asyncio.wait(list(self._writes))
        for opened in self.calendars.values():
            opened.close()
        self.calendars.clear()
        for draft in self._drafts.values():
            draft.close()
        self._drafts.clear()
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
        """Run ``operation`` on the open calendar, save what it changed as pending, then show it.

        Raises whatever ``operation`` raises, and StorageError if the file could not save the
        change; either way the calendar is left exactly as it was (see the module docstring),
        so the caller may simply try again.
        """
        task = asyncio.ensure_future(self._write(name, operation))
        self._writes.add(task)
        task.add_done_callback(_forget_write(self._writes))
        return await asyncio.shield(task)  # a cancelled caller leaves the save to finish

    async def _write(self, name: CalendarId, operation: Callable[[Calendar], T]) -> tuple[T, SavedWrite]:
        async with self._write_locks.setdefault(name, asyncio.Lock()):
            draft = self._draft(name)
            try:
                result = operation(draft.calendar)
            except BaseException:
                if draft.take_changes():  # it changed something before raising: never stored, never shown
                    self._drop_draft(name)
                raise
            changes = draft.take_changes()
            if not changes:
                return result, SavedWrite((), (), ())
            storage, ledger = self._require_storage(), self._require_ledger()
            client = draft.doc.client_id
            try:
                await ledger.note_client(name, client)  # before the append: see ledger.py on crash safety
                await storage.append_many([(name, change.update) for change in changes])
            except BaseException as exc:
                self._drop_draft(name)
                if isinstance(exc, StorageError):
                    log.warning("local change not saved; nothing of it is kept",
                                extra={"calendar": name, "error": str(exc)})
                raise
            ids = self._show(name, changes)
            already_stored = await ledger.record(
                name, [LocalChange(client, decode_state_vector(c.state_vector).get(client, 0), ids) for c in changes]
            )
            log.debug("saved local change", extra={"calendar": name, "reservations": len(ids)})
            return result, SavedWrite(tuple(c.update for c in changes), ids, _sorted_ids(already_stored))

    def _draft(self, name: CalendarId) -> Replica:
        """The calendar's draft (made from the replica on the first write; a fresh client id)."""
        replica = self.calendars[name].replica
        draft = self._drafts.get(name)
        if draft is None:
            draft = self._drafts[name] = Replica(name, actor=self.actor)
            draft.load([replica.full_state()])
        draft.calendar.assume_home = replica.calendar.assume_home
        return draft

    def _drop_draft(self, name: CalendarId) -> None:
        """Forget a draft holding a change that was not stored; the next write starts from the replica."""
        draft = self._drafts.pop(name, None)
        if draft is not None:
            draft.close()

    def _show(self, name: CalendarId, changes: list[Change]) -> tuple[ReservationId, ...]:
        """Apply stored local changes to the replica; the reservations they touched."""
        opened = self.calendars[name]
        opened.take_touched()
        for change in changes:
            opened.replica.apply(change.update)
        return opened.take_touched()

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
        try:
            await self._require_storage().append(name, change.update)
        except StorageError as exc:
            log.warning("remote change not saved; dropped until the relay sends it again",
                        extra={"calendar": name, "error": str(exc)})
            await self._reload_replica(name)
            raise
        draft = self._drafts.get(name)
        if draft is not None:
            draft.apply(change.update)
            draft.take_changes()
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
            await self._require_storage().set_meta(PULLED_PREFIX + name, at)
            opened.replica.calendar.assume_home = False  # the home record, if any, is here now

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

    def held(self, name: CalendarId) -> str:
        """Why the relay refused this calendar's local changes ("" if it did not: see
        :attr:`~accord.terminal.ledger.CalendarLedger.held`)."""
        return self._require_ledger().get(name).held if name in self.calendars else ""

    async def hold(self, name: CalendarId, reason: str, at: str) -> None:
        """Stop syncing ``name``: the relay refused its local changes."""
        await self._require_ledger().hold(name, reason, at)

    async def release(self, name: CalendarId, at: str) -> None:
        """Sync ``name`` again."""
        await self._require_ledger().release(name, at)

    async def discard_local(self, name: CalendarId, at: str) -> int:
        """Drop every local change of ``name`` the relay has not acknowledged, by emptying the
        calendar here; the next sync pulls it from the relay again. Returns how many were dropped."""
        storage = self._require_storage()
        dropped = self.pending(name)
        async with self._write_locks.setdefault(name, asyncio.Lock()):
            _rows, top = await storage.log_length(name)
            await storage.compact(name, top, EMPTY_UPDATE)
            # Empty the replica before the hold is lifted: the link may (re)connect at any await
            # and sync every calendar not held, from the replica as it is then.
            await self._reload_replica(name)
            await self._require_ledger().forget_local(name, at)
        return dropped

    def pending(self, name: CalendarId) -> int:
        """Local changes of ``name`` the relay has not acknowledged (0 if not open)."""
        opened = self.calendars.get(name)
        if opened is None or self._ledger is None:
            return 0
        return self._ledger.get(name).pending_count(opened.replica.clocks())

    def statuses(self, pulled: Set[CalendarId], refused: Mapping[CalendarId, str]) -> tuple[CalendarStatus, ...]:
        """Each open calendar's pending count, given what the link pulled and which calendars the relay refused."""
        return tuple(
            CalendarStatus(name=name, pending=self.pending(name), pulled=name in pulled,
                           refused=f"{self.held(name)} (changes held here: retry or discard)" if self.held(name)
                           else refused.get(name, ""))
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

    async def _reload_replica(self, name: CalendarId) -> None:
        """Replace the open calendar's replica by what the file holds (after a failed append).
        If the file cannot be read either, the replica stays as it is (the error is reported)."""
        storage = self._require_storage()
        old = self.calendars[name]
        try:
            updates = await storage.load(name)
        except StorageError as exc:
            log.error("cannot reload calendar after a failed save", extra={"calendar": name, "error": str(exc)})
            return
        replica = Replica(name, actor=self.actor)
        replica.load(updates)
        replica.calendar.assume_home = old.replica.calendar.assume_home
        old.close()
        self._drop_draft(name)
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


def _forget_write(writes: set[asyncio.Task[Any]]) -> Callable[[asyncio.Task[Any]], None]:
    def forget(task: asyncio.Task[Any]) -> None:
        writes.discard(task)
        if not task.cancelled():
            task.exception()  # retrieved: a cancelled caller's failed write is already logged
    return forget


def _sorted_ids(ids: set[str]) -> tuple[ReservationId, ...]:
    return tuple(sorted(ReservationId(i) for i in ids))
