"""The ledger: what this terminal wrote and what the relay acknowledged, per calendar.

Every local write is one Yjs transaction by this process's client id; it is identified by
``(client, clock)`` where ``clock`` is that client's clock right after the write (the Yjs
state-vector convention). The relay's ACK carries its state vector after a durable commit:
a local change is *stored on the relay* once ``acked[client] >= clock``.

The ledger of a calendar lives in one store-meta key (``terminal/ledger/<calendar>``) so the
pending count survives restarts. It is a small state-based CRDT so that two processes on the
same store file (say ``accord terminal watch`` and ``accord terminal book``) do not undo each
other's bookkeeping: saving re-reads the stored record and merges it (acknowledged clocks by
maximum, clients and pending changes by union), then drops what the merged ACK covers.
Each process counts only the pending changes its own document holds
(:meth:`CalendarLedger.known_pending`): it cannot send what it never loaded.

Crash safety: the writing client id is recorded *before* the first update of a process is
appended, so even a crash between the append and the pending-entry save leaves the
terminal knowing that its own client has something the relay may lack
(:meth:`CalendarLedger.covers`).
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from accord.engine.errors import StorageError
from accord.engine.model import CalendarId
from accord.engine.storage import Storage

KEY_PREFIX = "terminal/ledger/"
SAVE_INTERVAL_S = 0.25  # at most ~4 rewrites of a busy calendar's record per second (each is O(pending))


@dataclass(frozen=True, slots=True)
class LocalChange:
    """One local write: the client that made it, its clock right after, and the reservations it touched."""

    client: int
    clock: int
    reservation_ids: tuple[str, ...]


@dataclass(slots=True)
class CalendarLedger:
    """Bookkeeping for one calendar (see the module docstring)."""

    acked: dict[int, int] = field(default_factory=dict)
    clients: set[int] = field(default_factory=set)
    pending: dict[tuple[int, int], tuple[str, ...]] = field(default_factory=dict)
    last_ack_at: str = ""
    generation: int = 0  # bumped when the relay is found to hold less than it acknowledged
    # Why the relay refused this calendar's local changes ("" = not held), and when that was
    # decided (a hold, or its release): the later decision wins a merge. A held calendar is
    # not synced, so its refused changes never go out under other credentials unasked.
    held: str = ""
    held_at: str = ""

    # ---- queries ---------------------------------------------------------------------------

    def is_acked(self, client: int, clock: int) -> bool:
        """True if the relay acknowledged ``client``'s writes up to ``clock``."""
        return self.acked.get(client, 0) >= clock

    def known_pending(self, local_clocks: Mapping[int, int]) -> dict[tuple[int, int], tuple[str, ...]]:
        """Pending changes that the document at ``local_clocks`` holds.

        Another process sharing the store may have recorded changes this process never loaded;
        they stay in the ledger for their owner (or the next start) but this process cannot send them.
        """
        return {key: ids for key, ids in self.pending.items() if local_clocks.get(key[0], 0) >= key[1]}

    def covers(self, local_clocks: Mapping[int, int]) -> bool:
        """True if every write of this terminal's clients in ``local_clocks`` is acknowledged."""
        return not self.known_pending(local_clocks) and all(self.is_acked(c, local_clocks.get(c, 0)) for c in self.clients)

    def pending_count(self, local_clocks: Mapping[int, int]) -> int:
        """Local changes not yet acknowledged (at least 1 if any own write is uncovered)."""
        known = self.known_pending(local_clocks)
        if known:
            return len(known)
        return 0 if self.covers(local_clocks) else 1

    def pending_ids(self, local_clocks: Mapping[int, int]) -> set[str]:
        """Reservations touched by a not yet acknowledged local change."""
        return {rid for ids in self.known_pending(local_clocks).values() for rid in ids}

    # ---- updates ---------------------------------------------------------------------------

    def merge(self, other: CalendarLedger) -> None:
        """Fold ``other`` in: clocks by maximum within a generation (a later generation's clocks
        replace an earlier one's: the relay lost what those acknowledged), clients and pending
        entries by union."""
        if other.generation > self.generation:
            self.acked, self.generation = dict(other.acked), other.generation
        elif other.generation == self.generation:
            for client, clock in other.acked.items():
                if clock > self.acked.get(client, 0):
                    self.acked[client] = clock
        self.clients |= other.clients
        for key, ids in other.pending.items():
            self.pending.setdefault(key, ids)
        if other.held_at > self.held_at:
            self.held, self.held_at = other.held, other.held_at
        self.last_ack_at = max(self.last_ack_at, other.last_ack_at)

    def prune(self, keep_client: int | None) -> None:
        """Drop acknowledged pending entries and finished clients of earlier processes."""
        self.pending = {key: ids for key, ids in self.pending.items() if not self.is_acked(*key)}
        busy = {client for client, _ in self.pending}
        self.clients = {c for c in self.clients if c == keep_client or c in busy or c not in self.acked}

    # ---- persistence -----------------------------------------------------------------------

    def to_json(self) -> str:
        return json.dumps(
            {
                "acked": sorted(self.acked.items()),
                "clients": sorted(self.clients),
                "pending": [[c, k, list(ids)] for (c, k), ids in sorted(self.pending.items())],
                "last_ack_at": self.last_ack_at,
                "generation": self.generation,
                "held": self.held,
                "held_at": self.held_at,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> CalendarLedger:
        """Parse a stored record; raise ValueError/TypeError/KeyError if it is malformed."""
        data: dict[str, Any] = json.loads(text)
        return cls(
            acked={int(c): int(k) for c, k in data["acked"]},
            clients={int(c) for c in data["clients"]},
            pending={(int(c), int(k)): tuple(str(i) for i in ids) for c, k, ids in data["pending"]},
            last_ack_at=str(data.get("last_ack_at", "")),
            generation=int(data.get("generation", 0)),
            held=str(data.get("held", "")),
            held_at=str(data.get("held_at", "")),
        )


class Ledger:
    """The ledgers of all open calendars, persisted in ``store`` meta.

    Args:
        store: the terminal's store.

    A process's own writing client (see :meth:`note_client`) is never pruned while it lives.
    """

    def __init__(self, store: Storage) -> None:
        self.store = store
        self._ledgers: dict[CalendarId, CalendarLedger] = {}
        self._own: dict[CalendarId, int] = {}
        self._locks: dict[CalendarId, asyncio.Lock] = {}
        self._dirty: set[CalendarId] = set()
        self._closing = False
        self._flushers: dict[CalendarId, asyncio.Task[None]] = {}
        self._saving: set[asyncio.Task[None]] = set()  # ACK saves, which outlive a cancelled caller

    async def load(self, calendar: CalendarId) -> CalendarLedger:
        """Read the calendar's ledger from the store (empty if there is none yet).

        Raises:
            StorageError: the stored record is unreadable (reported, never replaced).
        """
        ledger = await self._read(calendar)
        self._ledgers[calendar] = ledger
        self._locks.setdefault(calendar, asyncio.Lock())
        return ledger

    def get(self, calendar: CalendarId) -> CalendarLedger:
        """The in-memory ledger of an open calendar."""
        return self._ledgers[calendar]

    async def note_client(self, calendar: CalendarId, client: int) -> None:
        """Record ``client`` as a writer of this terminal before its first update is stored."""
        self._own[calendar] = client
        ledger = self._ledgers[calendar]
        if client not in ledger.clients:
            ledger.clients.add(client)
            await self.save(calendar)

    async def record(self, calendar: CalendarId, changes: Iterable[LocalChange]) -> set[str]:
        """Add stored local changes as pending and persist the ledger.

        Returns the reservation ids of changes the relay acknowledged already (it can ask for
        them with a STEP1 while they are being stored here).
        """
        ledger = self._ledgers[calendar]
        acknowledged: set[str] = set()
        for change in changes:
            ledger.clients.add(change.client)
            if ledger.is_acked(change.client, change.clock):
                acknowledged.update(change.reservation_ids)
            else:
                ledger.pending[(change.client, change.clock)] = change.reservation_ids
        # Saved in the background, coalesced and rate-limited: a burst of offline writes rewrites
        # the record a few times per second, not once per write (each save is O(pending)). The
        # update itself is already durable, and note_client() saved the writing client first, so
        # a crash before this save still leaves the terminal knowing it has unacknowledged writes.
        self.save_soon(calendar)
        return acknowledged

    async def acknowledge(self, calendar: CalendarId, clocks: Mapping[int, int], at: str) -> set[str]:
        """Merge an ACK; persist; return the reservation ids whose changes it newly covers."""
        ledger = self._ledgers[calendar]
        before = dict(ledger.pending)
        for client, clock in clocks.items():
            if clock > ledger.acked.get(client, 0):
                ledger.acked[client] = clock
        ledger.last_ack_at = max(ledger.last_ack_at, at)
        ledger.prune(self._own.get(calendar))
        # The ACK is visible in memory now (a waiter in synced() may return and close the terminal,
        # cancelling the link's task that runs this): the save must still finish before the store closes.
        saving = asyncio.create_task(self.save(calendar), name=f"ledger-ack-save:{calendar}")
        self._saving.add(saving)
        saving.add_done_callback(self._saving.discard)
        await asyncio.shield(saving)
        return {rid for key, ids in before.items() if key not in ledger.pending for rid in ids}

    async def regress(self, calendar: CalendarId, relay_clocks: Mapping[int, int]) -> bool:
        """The relay holds less than it acknowledged (restored from an older copy, or replaced):
        forget those acknowledgements, so that status tells the truth until it acknowledges the
        re-sent changes again. Returns True if anything was forgotten (then persisted)."""
        ledger = self._ledgers[calendar]
        regressed = {c for c, clock in ledger.acked.items() if clock > relay_clocks.get(c, 0)}
        if not regressed:
            return False
        for client in regressed:  # what the relay lost is pending again until it is acknowledged again
            ledger.pending.setdefault((client, ledger.acked[client]), ())
        ledger.generation += 1  # a new generation: the merge must not bring the lost ACKs back
        ledger.acked = {c: min(clock, relay_clocks.get(c, 0)) for c, clock in ledger.acked.items()}
        await self.save(calendar)
        return True

    async def hold(self, calendar: CalendarId, reason: str, at: str) -> None:
        """The relay refused this calendar's local changes: stop syncing it (see :attr:`CalendarLedger.held`)."""
        ledger = self._ledgers[calendar]
        ledger.held, ledger.held_at = reason or "refused by the relay", max(at, ledger.held_at)
        await self.save(calendar)

    async def release(self, calendar: CalendarId, at: str) -> None:
        """Sync the calendar again (its held changes go out with the terminal's current token)."""
        ledger = self._ledgers[calendar]
        ledger.held, ledger.held_at = "", max(at, ledger.held_at)
        await self.save(calendar)

    async def forget_local(self, calendar: CalendarId, at: str) -> None:
        """The calendar's local changes were discarded: nothing is pending, and it syncs again."""
        ledger = self._ledgers[calendar]
        ledger.pending.clear()
        ledger.clients.clear()
        self._own.pop(calendar, None)
        ledger.held, ledger.held_at = "", max(at, ledger.held_at)
        async with self._locks[calendar]:  # not merged: the discarded entries must not come back
            await self.store.set_meta(KEY_PREFIX + calendar, ledger.to_json())

    def save_soon(self, calendar: CalendarId) -> None:
        """Schedule a save; saves requested while one runs are merged into the next."""
        self._dirty.add(calendar)
        task = self._flushers.get(calendar)
        if task is None or task.done():
            self._flushers[calendar] = asyncio.create_task(self._flush_loop(calendar), name=f"ledger-save:{calendar}")

    async def _flush_loop(self, calendar: CalendarId) -> None:
        while calendar in self._dirty:
            self._dirty.discard(calendar)
            await self.save(calendar)
            if calendar in self._dirty and not self._closing:
                await asyncio.sleep(SAVE_INTERVAL_S)  # a burst of writes: let more join the next save

    async def flush(self) -> None:
        """Wait for scheduled saves (call before closing the store).

        Raises:
            StorageError: a background save failed.
        """
        self._closing = True
        if self._saving:
            await asyncio.gather(*self._saving, return_exceptions=True)
        while True:
            running = [task for task in self._flushers.values() if not task.done()]
            finished = [task for task in self._flushers.values() if task.done()]
            for task in finished:
                task.result()  # re-raise a failed save
            self._flushers = {k: t for k, t in self._flushers.items() if not t.done()}
            if not running:
                return
            await asyncio.gather(*running, return_exceptions=True)

    async def save(self, calendar: CalendarId) -> None:
        """Merge with the stored record (another process may share the store), prune, write."""
        async with self._locks[calendar]:
            ledger = self._ledgers[calendar]
            ledger.merge(await self._read(calendar))
            ledger.prune(self._own.get(calendar))
            await self.store.set_meta(KEY_PREFIX + calendar, ledger.to_json())

    async def _read(self, calendar: CalendarId) -> CalendarLedger:
        text = await self.store.get_meta(KEY_PREFIX + calendar)
        if text is None:
            return CalendarLedger()
        try:
            return CalendarLedger.from_json(text)
        except (ValueError, TypeError, KeyError) as exc:
            raise StorageError(
                f"the terminal's sync record for calendar {calendar!r} is unreadable ({exc}); "
                "the reservations are intact: inspect the store with `accord store check`"
            ) from None
