"""The commit pipeline: every update is persisted before it is forwarded or acknowledged.

Readers apply an update to the in-memory document and :meth:`CommitPipeline.submit` the
resulting change; one task takes everything queued, appends it to the store in a single
transaction (group commit), and only then forwards each change to the calendar's other
subscribers and acknowledges it to its sender. While a commit runs, new changes queue up and
share the next one, so fsyncs per update fall as load rises.

Named lifecycle points: :attr:`CommitPipeline.change_hooks` see every change as it is queued
(the admission's key index keeps in step with the document), :attr:`CommitPipeline.batch_hooks`
run after each batch is stored and forwarded (the home decides what just became durable).
:attr:`CommitPipeline.notice` fires after every batch, for anyone waiting on a condition.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from accord.engine.errors import CloseCode, StorageError
from accord.engine.model import CalendarId
from accord.engine.replica import Change
from accord.engine.session import Framing
from accord.engine.storage import CompactionPolicy, Storage

from .calendars import CalendarHandle
from .metrics import Metrics
from .notice import Notice

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)
MAX_BATCH = 5000


@dataclass(slots=True)
class _Item:
    handle: CalendarHandle
    change: Change | None
    origin: Connection | None
    state_vector: bytes
    withheld: tuple[bytes, object] | None = None  # (update, origin): applied to the replica only once stored
    echo: bool = False  # forward to the origin too (it holds only part of the change)

    @property
    def row(self) -> bytes | None:
        """The update this item stores (None: an acknowledgement only)."""
        if self.withheld is not None:
            return self.withheld[0]
        return self.change.update if self.change is not None else None


class CommitPipeline:
    """Persist, then forward and acknowledge, in arrival order (see module docstring)."""

    def __init__(self, storage: Storage, metrics: Metrics, *, max_queue: int = 10_000,
                 compaction: CompactionPolicy | None = None, notice: Notice | None = None) -> None:
        self.storage = storage
        self.metrics = metrics
        self.compaction = compaction or CompactionPolicy()
        # Readers get back-pressure in submit(); the relay's own writes (decisions, made while a
        # batch commits) must never wait or fail on a full queue, so the queue itself is unbounded.
        self.max_queue = max_queue
        self.notice = notice or Notice()
        self.change_hooks: list[Callable[[CalendarHandle, Change], None]] = []
        self.batch_hooks: list[Callable[[list[CalendarHandle]], None]] = []
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.busy: set[CalendarId] = set()
        self.failed: StorageError | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commit-pipeline")

    async def submit(self, handle: CalendarHandle, change: Change | None, origin: Connection | None, *,
                     echo: bool = False) -> None:
        """Queue a change (or, with ``change=None``, just an acknowledgement) for commit.

        ``echo``: the change holds more than ``origin`` sent (the relay's receipts): forward it
        to ``origin`` as well.

        Waits when ``max_queue`` items are queued, which slows the submitting reader down (back-pressure).
        """
        while self._queue.qsize() >= self.max_queue and self.failed is None:
            self._space.clear()
            await self._space.wait()
        if self.failed is not None:
            raise self.failed
        handle.touch()
        state_vector = change.state_vector if change is not None else handle.replica.state_vector()
        self._enqueue(_Item(handle, change, origin, state_vector, echo=echo))

    def submit_local(self, handle: CalendarHandle) -> None:
        """Queue the relay's own writes (decisions, home marker) captured by the replica."""
        for change in handle.replica.take_changes():
            self._enqueue(_Item(handle, change, None, change.state_vector))

    def submit_withheld(self, handle: CalendarHandle, update: bytes, origin: object) -> None:
        """Queue an update the replica does not hold yet (the home's decisions): it is stored,
        then applied to the replica (tagged ``origin``) and forwarded, so nobody sees it before
        it is durable: not a subscriber's STEP2, not a peer."""
        self._enqueue(_Item(handle, None, None, b"", (update, origin)))

    def _enqueue(self, item: _Item) -> None:
        if item.change is not None:
            self._observe(item.handle, item.change)
        self._idle.clear()
        self.busy.add(item.handle.name)
        self._queue.put_nowait(item)

    async def healthy(self) -> bool:
        """True if commits have not failed and the store answers (for /healthz)."""
        if self.failed is not None:
            return False
        try:
            await self.storage.get_meta("healthz")
        except (StorageError, OSError, ValueError) as exc:
            log.warning("health check failed", extra={"error": str(exc)})
            return False
        return True

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
            while not self._queue.empty() and len(batch) < MAX_BATCH:
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
                        item.origin.close_soon(CloseCode.INTERNAL_ERROR, "store unavailable")
                self._idle.set()
                self.notice.notify()
                return
            except Exception:  # a bug: log it, keep the pipeline alive
                log.exception("commit pipeline error")
            if self._queue.empty():
                self.busy.clear()
                self._idle.set()
            self.notice.notify()

    async def _commit(self, batch: list[_Item]) -> None:
        rows = [(item.handle.name, row) for item in batch if (row := item.row) is not None]
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
            if item.row is not None:
                handle.rows_in_log += 1
                handle.last_seq = seqs[index]
                index += 1
            if item.withheld is not None:  # stored now: apply it (None if it brought nothing new)
                update, origin = item.withheld
                item.change = handle.replica.apply(update, origin=origin)
                if item.change is not None:
                    self._observe(handle, item.change)
            if item.change is not None:
                handle.committed = item.change.state_vector
                self._forward(handle, item.change.update, None if item.echo else item.origin)
            if item.origin is not None:
                acks[(item.origin, handle.name)] = item.state_vector
        for (connection, name), state_vector in acks.items():
            connection.acknowledge(name, state_vector)
        handles = list(touched.values())
        for hook in self.batch_hooks:
            hook(handles)
        for handle in handles:
            if self.compaction.should_compact(handle.rows_in_log):
                await self._compact(handle)

    def _observe(self, handle: CalendarHandle, change: Change) -> None:
        for hook in self.change_hooks:
            hook(handle, change)

    def _forward(self, handle: CalendarHandle, update: bytes, origin: Connection | None) -> None:
        """Send ``update`` to every subscriber but its origin, framed once per framing."""
        framed: dict[Framing, bytes] = {}
        for connection in handle.subscribers:
            if connection is origin:
                continue  # never echo an update back to where it came from
            session = connection.session
            data = framed.get(session.framing)
            if data is None:
                data = framed[session.framing] = session.update(handle.name, update)
            connection.send(data)
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
