"""The relay's audit trail: entries for its clients' changes, and the log of every entry it stores.

See :mod:`accord.engine.audit` for what an entry holds, where it lives and the trust model.

- The hub applies a client's update inside :meth:`Audit.capture`, then calls
  :meth:`Audit.record`, which writes one entry per reservation the update touched (attributed to
  the connection's token and the reservation's ``updated_by``, dated by this relay's clock) and
  returns one change holding the client's update and its entries: stored in one row, forwarded
  as one message; the sender gets the entries alone (it lacks only them). Peers' updates are not recorded
  here: the relay that first stored them did that, and its entries travel with them.
- Whatever the source, the entries a change brings are handed to the commit pipeline with that
  change (:meth:`Audit.take`, the pipeline's ``audit_source``), which appends them to the store's
  audit log in the same transaction as the change's row.
- :meth:`Audit.read` is the Python API (``Relay.audit``) for the FHIR facade and operators.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from datetime import datetime

import pycrdt

from accord.engine.audit import AuditEntry, AuditRecord, ChangeWatch, LedgerWatch, read_entries, write_entries
from accord.engine.model import CalendarId
from accord.engine.replica import Change
from accord.engine.storage import Storage

from .auth import Grant
from .calendars import CalendarHandle
from .config import utc_now


def _entry_ids() -> Iterator[str]:
    while True:
        yield secrets.token_hex(8)


class Audit:
    """The watches of the loaded calendars; plug :meth:`calendar_unloading` into the calendar set."""

    def __init__(self, relay_id: str, storage: Storage, *, clock: Callable[[], datetime] = utc_now) -> None:
        self.relay_id = relay_id
        self.storage = storage
        self.clock = clock
        self.origin = ("audit", relay_id)
        self._changes: dict[CalendarId, ChangeWatch] = {}
        self._ledgers: dict[CalendarId, LedgerWatch] = {}
        self.written = 0  # entries this relay wrote (for tests and benchmarks)

    def watch(self, handle: CalendarHandle) -> None:
        """Follow this calendar's entries (call before applying any update to it)."""
        if handle.name not in self._ledgers:
            calendar = handle.replica.calendar
            self._ledgers[handle.name] = LedgerWatch(calendar)
            self._changes[handle.name] = ChangeWatch(calendar)

    @contextlib.contextmanager
    def capture(self, handle: CalendarHandle, grant: Grant) -> Iterator[None]:
        """Note what the changes ``grant``'s client makes inside this block touch (for :meth:`record`);
        entries they carry are marked as carried by that client."""
        self.watch(handle)
        ledger = self._ledgers[handle.name]
        ledger.via = f"client:{grant.name}"
        try:
            with self._changes[handle.name].capture():
                yield
        finally:
            ledger.via = ""

    def record(self, handle: CalendarHandle, grant: Grant, change: Change) -> tuple[Change, bytes | None]:
        """``change`` with the entries for what the last :meth:`capture` touched merged in, and
        the update of the entries alone (for the sender, which lacks only them; None: none written)."""
        entries = self._entries(handle, grant)
        if not entries:
            return change, None
        write_entries(handle.replica.calendar, entries, self.origin)
        written = handle.replica.take_changes()
        own = pycrdt.merge_updates(*(c.update for c in written)) if len(written) > 1 else written[0].update
        return Change(pycrdt.merge_updates(change.update, own), written[-1].state_vector), own

    def record_local(self, handle: CalendarHandle, grant: Grant) -> Change | None:
        """After an edit made on the relay for ``grant`` inside :meth:`capture` (the FHIR facade):
        write its entries and return all of it as one change to submit (None: nothing changed)."""
        entries = self._entries(handle, grant)
        if entries:
            write_entries(handle.replica.calendar, entries, self.origin)
        changes = handle.replica.take_changes()
        if not changes:
            return None
        merged = pycrdt.merge_updates(*(c.update for c in changes)) if len(changes) > 1 else changes[0].update
        return Change(merged, changes[-1].state_vector)

    def _entries(self, handle: CalendarHandle, grant: Grant) -> list[AuditEntry]:
        watch = self._changes.get(handle.name)
        ledger = self._ledgers.get(handle.name)
        if watch is None or ledger is None:
            return []
        entries = watch.entries(now=self.clock(), relay_id=self.relay_id, by=grant.name, role=str(grant.role),
                                entry_ids=_entry_ids(), recorded=ledger.carried())
        self.written += len(entries)
        return entries

    def take(self, handle: CalendarHandle) -> list[AuditRecord]:
        """The entries changes brought into this calendar since the last call (the pipeline
        stores them with the change it is queueing)."""
        ledger = self._ledgers.get(handle.name)
        return ledger.take() if ledger is not None else []

    async def read(self, calendar: CalendarId, reservation_id: str | None = None) -> list[AuditEntry]:
        """The calendar's stored audit entries in the order this relay stored them (optionally of
        one reservation). Reads the store: entries queued but not committed are not included."""
        return read_entries(await self.storage.audit_log(calendar), reservation_id)

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        for watches in (self._changes, self._ledgers):
            watch = watches.pop(handle.name, None)
            if watch is not None:
                watch.close()
