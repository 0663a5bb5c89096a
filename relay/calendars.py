"""The calendars a relay holds: loaded from the store on first use, unloaded when idle.

:class:`CalendarSet` is also the relay's :class:`~accord.engine.session.Documents`: sessions
read state vectors and diffs from the loaded replicas. Other parts plug into two named
lifecycle points instead of being called from here: :attr:`CalendarSet.loaded_hooks` run when
a calendar comes into memory (the home decides its pending bookings, peers are subscribed),
:attr:`CalendarSet.unloading_hooks` just before it leaves (per-calendar state is dropped).

Reading creates nothing: loading a calendar the store does not hold gives an *empty* handle
(:meth:`CalendarHandle.is_empty`) and writes nothing; the calendar is stored by its first real
write. An empty calendar is not offered to peers, and it is dropped as soon as nobody listens
(:meth:`CalendarSet.unload`), so names that were only read leave no trace.
"""

from __future__ import annotations

import asyncio
import ctypes
import fnmatch
import gc
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from accord.engine.calendar import Calendar
from accord.engine.model import CalendarId
from accord.engine.protocol import EMPTY_STATE_VECTOR, covers, decode_state_vector
from accord.engine.replica import Replica
from accord.engine.storage import Storage

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)


@dataclass(eq=False)
class CalendarHandle:
    """One loaded calendar: its replica, who listens to it, and bookkeeping for the store."""

    name: CalendarId
    replica: Replica
    subscribers: set[Connection] = field(default_factory=set)
    rows_in_log: int = 0
    log_bytes: int = 0  # bytes of the rows in the log (see CompactionPolicy)
    snapshot_bytes: int = 0  # bytes of its first row: the last snapshot, once compacted
    last_seq: int = 0
    last_active: float = field(default_factory=time.monotonic)
    committed: bytes = b"\x00"  # state vector of the last change committed to the store
    compact_retry_rows: int = 0  # a compaction failed for now: not tried again before the log has this many rows
    peers_open: bool = False  # opened on the peer links (once it has content)
    unloaded: bool = False  # left memory (a hook that awaited while it loaded finds this)

    def touch(self) -> None:
        self.last_active = time.monotonic()

    def is_empty(self) -> bool:
        """True if the calendar holds nothing, in the store or in memory (only read so far)."""
        return self.rows_in_log == 0 and self.replica.state_vector() == EMPTY_STATE_VECTOR

    def has_clients(self) -> bool:
        """True if a terminal or stock client (not only peers) listens."""
        return any(not c.is_peer for c in self.subscribers)


class CalendarSet:
    """Loads calendars from the store on first use and unloads them when idle.

    Args:
        storage: where calendars live.
    """

    def __init__(self, storage: Storage) -> None:
        self.storage = storage
        self.loaded: dict[CalendarId, CalendarHandle] = {}
        self._loading: dict[CalendarId, asyncio.Future[CalendarHandle]] = {}
        self.loaded_hooks: list[Callable[[CalendarHandle], Awaitable[None]]] = []
        # Awaited before a calendar is handed out (the pipeline's ``writable``): while a failing
        # store is retried, replicas hold changes not stored yet, and no new subscriber may read them.
        self.gate: Callable[[], Awaitable[None]] | None = None
        self.unloading_hooks: list[Callable[[CalendarHandle], None]] = []
        self.loads = 0  # calendars loaded from the store since start (for /metrics and tests)

    # ---- Documents (for sync sessions) ----------------------------------------------------------

    def state_vector(self, calendar: CalendarId) -> bytes:
        return self.loaded[calendar].replica.state_vector()

    def diff(self, calendar: CalendarId, state_vector: bytes) -> bytes:
        return self.loaded[calendar].replica.diff(state_vector)

    # ---- loading --------------------------------------------------------------------------------

    async def get(self, name: CalendarId) -> CalendarHandle:
        """The loaded calendar, loading it (once, even under concurrent callers) if needed.

        Waits while the store is failing (see :attr:`gate`).

        Raises:
            CorruptRecord / StoreUnavailable: the stored log cannot be read; nothing is replaced.
            StorageError: the store failed for good.
        """
        if self.gate is not None:
            await self.gate()
        handle = self.loaded.get(name)
        if handle is not None:
            return handle
        pending = self._loading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CalendarHandle] = asyncio.get_running_loop().create_future()
        self._loading[name] = future
        try:
            handle = await self._load(name)
            future.set_result(handle)
            return handle
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: concurrent waiters re-raise it themselves
            raise
        finally:
            del self._loading[name]

    async def _load(self, name: CalendarId) -> CalendarHandle:
        started = time.perf_counter()
        # The length first: the rows loaded then cover every seq up to ``top`` (a relay cluster's
        # other processes may append meanwhile; it fetches what comes after ``top``).
        rows, top = await self.storage.log_length(name)
        updates = await self.storage.load(name)
        replica = Replica(name, actor="relay")
        replica.load(updates)
        handle = CalendarHandle(name, replica, rows_in_log=rows, log_bytes=sum(map(len, updates)),
                                snapshot_bytes=len(updates[0]) if updates else 0, last_seq=top,
                                committed=replica.state_vector())
        self.loaded[name] = handle
        self.loads += 1
        log.info(
            "calendar loaded",
            extra={"calendar": name, "rows": rows, "reservations": len(replica.calendar.reservations),
                   "ms": round((time.perf_counter() - started) * 1000, 1)},
        )
        for hook in self.loaded_hooks:
            await hook(handle)
        return handle

    def is_committed(self, name: CalendarId, state_vector: bytes) -> bool:
        """True if ``name`` is loaded and stored up to ``state_vector``."""
        handle = self.loaded.get(name)
        return handle is not None and covers(decode_state_vector(handle.committed), decode_state_vector(state_vector))

    async def known(self) -> list[CalendarId]:
        """Every calendar in the store or in memory."""
        return sorted(set(await self.storage.calendars()) | set(self.loaded))

    def unload_idle(self, idle_s: float, busy: set[CalendarId]) -> list[CalendarId]:
        """Drop calendars with no client subscribers and no activity for ``idle_s`` seconds."""
        now = time.monotonic()
        dropped = []
        for name, handle in list(self.loaded.items()):
            if handle.has_clients() or name in busy or now - handle.last_active < idle_s:
                continue
            self._drop(handle)
            dropped.append(name)
        if dropped:
            gc.collect()
            release_freed_memory()
            log.info("calendars unloaded", extra={"count": len(dropped), "loaded": len(self.loaded)})
        return dropped


    def unload(self, name: CalendarId) -> bool:
        """Drop ``name`` now if it is loaded, empty and nobody listens (a name that was only
        read); True if it was dropped. Calendars with content wait for :meth:`unload_idle`."""
        handle = self.loaded.get(name)
        if handle is None or handle.subscribers or not handle.is_empty():
            return False
        self._drop(handle)
        return True

    def _drop(self, handle: CalendarHandle) -> None:
        for hook in self.unloading_hooks:
            hook(handle)
        handle.replica.close()
        handle.unloaded = True
        del self.loaded[handle.name]


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, so RSS would not follow
    the active set after calendars unload). A no-op where glibc's ``malloc_trim`` is missing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def matches(name: str, globs: list[str] | tuple[str, ...]) -> bool:
    """True if ``name`` matches one of ``globs``."""
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)


OFF_LOOP_VERDICTS = 200  # fewer unchecked verdicts than this are checked inline by the read


async def check_verdicts_off_loop(calendar: Calendar) -> int:
    """Check the signatures of a calendar's verdicts that no read has checked yet in a worker
    thread (~55 µs each: 10,000 verdicts would hold the event loop for half a second). Returns
    how many it checked (none when fewer than :data:`OFF_LOOP_VERDICTS`: reads check those)."""
    home = calendar.home_record
    pending = calendar.unchecked_verdicts()
    if home is None or len(pending) < OFF_LOOP_VERDICTS:
        return 0
    calendar.verifier.remember(await asyncio.to_thread(calendar.verifier.check_all, pending, home))
    return len(pending)


async def open_verdicts_off_loop(calendar: Calendar) -> None:
    """Read (not check) a calendar's verdicts that its verifier has not read yet, in a worker
    thread (~30 µs each), for :func:`~accord.engine.decisions.adoption_point`, which reads every one."""
    verifier = calendar.verifier
    pending = verifier.unopened(calendar.verdict_entries())
    if len(pending) >= OFF_LOOP_VERDICTS:
        verifier.remember_opened(await asyncio.to_thread(verifier.open_all, pending))


async def read_off_loop(calendar: Calendar) -> None:
    """Parse a large calendar's reservations in a worker thread before its first whole read
    (``list``: a FHIR search), so the event loop pays only Yrs' ``to_json`` of them (~0.15 s
    at 10,000) instead of the parsing too (~0.5 s). Verdicts are checked first, off the loop
    too. If the calendar changes meanwhile, the read that follows parses it inline as before.
    Costs nothing once the calendar was read whole (every FHIR request calls it)."""
    if not calendar.first_read_pending:
        return
    await check_verdicts_off_loop(calendar)
    snapshot = calendar.read_snapshot()
    if snapshot is None:
        return
    calendar.install_reads(snapshot, await asyncio.to_thread(calendar.parse_snapshot, snapshot))
