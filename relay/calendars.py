"""Calendars held by a relay: loading on first use, unloading when idle, and the commit
pipeline that persists every update before it is forwarded or acknowledged.

The pipeline is the relay's group commit. Readers apply an update to the in-memory document
and :meth:`CommitPipeline.submit` the resulting change; one task takes everything queued,
appends it to the store in a single transaction, and only then forwards each change to the
calendar's other subscribers and acknowledges it to its sender. While a commit runs, new
changes queue up and share the next one, so fsyncs per update fall as load rises.
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

from accord.engine.decisions import Decider
from accord.engine.errors import StorageError
from accord.engine.model import CalendarId
from accord.engine.replica import Change, Replica
from accord.engine.storage import CompactionPolicy, Storage
from accord.engine.update_keys import KeyIndex

from .metrics import Metrics

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
    last_seq: int = 0
    last_active: float = field(default_factory=time.monotonic)
    decider: Decider | None = None  # set when this relay is the calendar's home
    key_index: KeyIndex | None = None  # spots client updates that write decision keys (built lazily)

    def touch(self) -> None:
        self.last_active = time.monotonic()


@dataclass(slots=True)
class _Item:
    handle: CalendarHandle
    change: Change | None
    origin: Connection | None
    state_vector: bytes


class CalendarSet:
    """Loads calendars from the store on first use and unloads them when idle.

    Args:
        storage: where calendars live.
        on_loaded: called with each newly loaded handle (the relay subscribes peers, sets up decisions).
    """

    def __init__(self, storage: Storage, *, on_loaded: Callable[[CalendarHandle], Awaitable[None]]) -> None:
        self.storage = storage
        self.loaded: dict[CalendarId, CalendarHandle] = {}
        self._loading: dict[CalendarId, asyncio.Future[CalendarHandle]] = {}
        self._on_loaded = on_loaded

    async def get(self, name: CalendarId) -> CalendarHandle:
        """The loaded calendar, loading it (once, even under concurrent callers) if needed.

        Raises:
            CorruptRecord / StoreUnavailable: the stored log cannot be read; nothing is replaced.
        """
        handle = self.loaded.get(name)
        if handle is not None:
            return handle
        pending = self._loading.get(name)
        if pending is not None:
            return await asyncio.shield(pending)
        future: asyncio.Future[CalendarHandle] = asyncio.get_running_loop().create_future()
        self._loading[name] = future
        try:
            started = time.perf_counter()
            updates = await self.storage.load(name)
            rows, top = await self.storage.log_length(name)
            replica = Replica(name, actor="relay")
            replica.load(updates)
            handle = CalendarHandle(name, replica, rows_in_log=rows, last_seq=top)
            self.loaded[name] = handle
            log.info(
                "calendar loaded",
                extra={"calendar": name, "rows": rows, "reservations": len(replica.calendar.reservations),
                       "ms": round((time.perf_counter() - started) * 1000, 1)},
            )
            await self._on_loaded(handle)
            future.set_result(handle)
            return handle
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # mark retrieved: concurrent waiters re-raise it themselves
            raise
        finally:
            del self._loading[name]

    async def known(self) -> list[CalendarId]:
        """Every calendar in the store or in memory."""
        return sorted(set(await self.storage.calendars()) | set(self.loaded))

    def unload_idle(self, idle_s: float, busy: set[CalendarId]) -> list[CalendarId]:
        """Drop calendars with no client subscribers and no activity for ``idle_s`` seconds."""
        now = time.monotonic()
        dropped = []
        for name, handle in list(self.loaded.items()):
            clients = [c for c in handle.subscribers if not c.is_peer]
            if clients or name in busy or now - handle.last_active < idle_s:
                continue
            if handle.decider is not None:
                handle.decider.close()
            handle.replica.close()
            del self.loaded[name]
            dropped.append(name)
        if dropped:
            gc.collect()
            release_freed_memory()
            log.info("calendars unloaded", extra={"count": len(dropped), "loaded": len(self.loaded)})
        return dropped


class CommitPipeline:
    """Persist, then forward and acknowledge, in arrival order (see module docstring)."""

    def __init__(
        self,
        storage: Storage,
        metrics: Metrics,
        *,
        max_queue: int = 10_000,
        compaction: CompactionPolicy | None = None,
        after_batch: Callable[[list[CalendarHandle]], None] | None = None,
    ) -> None:
        self.storage = storage
        self.metrics = metrics
        self.compaction = compaction or CompactionPolicy()
        # Readers get back-pressure in submit(); the relay's own writes (decisions, made while a
        # batch commits) must never wait or fail on a full queue, so the queue itself is unbounded.
        self.max_queue = max_queue
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._space = asyncio.Event()
        self._space.set()
        self._after_batch = after_batch
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.busy: set[CalendarId] = set()
        self.failed: StorageError | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commit-pipeline")

    async def submit(self, handle: CalendarHandle, change: Change | None, origin: Connection | None) -> None:
        """Queue a change (or, with ``change=None``, just an acknowledgement) for commit.

        Waits when ``max_queue`` items are queued, which slows the submitting reader down (back-pressure).
        """
        while self._queue.qsize() >= self.max_queue and self.failed is None:
            self._space.clear()
            await self._space.wait()
        if self.failed is not None:
            raise self.failed
        handle.touch()
        if change is not None:
            self._observe_keys(handle, change)
        state_vector = change.state_vector if change is not None else handle.replica.state_vector()
        self._idle.clear()
        self.busy.add(handle.name)
        await self._queue.put(_Item(handle, change, origin, state_vector))

    def submit_local(self, handle: CalendarHandle) -> None:
        """Queue the relay's own writes (decisions, home marker) captured by the replica."""
        for change in handle.replica.take_changes():
            self._observe_keys(handle, change)
            self._idle.clear()
            self.busy.add(handle.name)
            self._queue.put_nowait(_Item(handle, change, None, change.state_vector))

    @staticmethod
    def _observe_keys(handle: CalendarHandle, change: Change) -> None:
        """Keep the calendar's protected-key index in step with every change the document made."""
        index = handle.key_index
        if index is not None and index.might_write_protected(change.update):
            index.observe(change.update)

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed and forwarded."""
        while not self._queue.empty() or not self._idle.is_set():
            await self._idle.wait()
            if not self._queue.empty():
                await asyncio.sleep(0)

    async def close(self) -> None:
        """Drain, then stop the pipeline task."""
        if self.failed is None:
            async with asyncio.timeout(30):
                await self.drain()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass

    async def _run(self) -> None:
        while True:
            batch = [await self._queue.get()]
            while not self._queue.empty() and len(batch) < 5000:
                batch.append(self._queue.get_nowait())
            self._space.set()
            try:
                await self._commit(batch)
            except StorageError as exc:
                self.failed = exc
                self._space.set()  # waiting submitters raise the failure instead of hanging
                log.error("store commit failed; relay stops accepting writes", extra={"error": str(exc)})
                for item in batch:
                    if item.origin is not None:
                        item.origin.abort_internal("store unavailable")
                self._idle.set()
                return
            except Exception:  # a bug: log it, keep the pipeline alive
                log.exception("commit pipeline error")
            if self._queue.empty():
                self.busy.clear()
                self._idle.set()

    async def _commit(self, batch: list[_Item]) -> None:
        rows = [(item.handle.name, item.change.update) for item in batch if item.change is not None]
        seqs: list[int] = []
        if rows:
            started = time.perf_counter()
            seqs = await self.storage.append_many(rows)
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
        acks: dict[tuple[Connection, CalendarId], bytes] = {}
        touched: dict[CalendarId, CalendarHandle] = {}
        index = 0
        for item in batch:
            handle = item.handle
            touched[handle.name] = handle
            if item.change is not None:
                handle.rows_in_log += 1
                handle.last_seq = seqs[index]
                index += 1
                self._forward(handle, item.change.update, item.origin)
            if item.origin is not None and item.origin.wants_acks:
                acks[(item.origin, handle.name)] = item.state_vector
        for (connection, name), state_vector in acks.items():
            connection.send(connection.sync.ack(name, state_vector))
        handles = list(touched.values())
        if self._after_batch is not None:
            self._after_batch(handles)
        for handle in handles:
            if self.compaction.should_compact(handle.rows_in_log):
                await self._compact(handle)

    def _forward(self, handle: CalendarHandle, update: bytes, origin: Connection | None) -> None:
        framed: bytes | None = None
        single: bytes | None = None
        for connection in handle.subscribers:
            if connection is origin:
                continue  # never echo an update back to where it came from
            if connection.sync.single is None:
                framed = framed or connection.sync.update(handle.name, update)
                connection.send(framed)
            else:
                single = single or connection.sync.update(handle.name, update)
                connection.send(single)
            self.metrics.updates_out += 1

    async def _compact(self, handle: CalendarHandle) -> None:
        started = time.perf_counter()
        snapshot = handle.replica.full_state()  # includes every committed row, maybe more: fine
        upto = handle.last_seq
        await self.storage.compact(handle.name, upto, snapshot)
        before = handle.rows_in_log
        handle.rows_in_log = 1
        log.info(
            "calendar compacted",
            extra={"calendar": handle.name, "rows_before": before, "bytes": len(snapshot),
                   "ms": round((time.perf_counter() - started) * 1000, 1)},
        )


def release_freed_memory() -> None:
    """Hand freed heap pages back to the OS (glibc keeps them otherwise, so RSS would not follow
    the active set after calendars unload). A no-op where glibc's ``malloc_trim`` is missing."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def matches(name: str, globs: list[str]) -> bool:
    """True if ``name`` matches one of ``globs``."""
    return any(fnmatch.fnmatchcase(name, glob) for glob in globs)
