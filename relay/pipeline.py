"""The commit pipeline: every update is persisted before it is forwarded or acknowledged.

Readers apply an update to the in-memory document and :meth:`CommitPipeline.submit` the
resulting change; one task takes everything queued, appends it to the store in a single
transaction (group commit), and only then forwards each change to the calendar's other
subscribers and acknowledges it to its sender. While a commit runs, new changes queue up and
share the next one, so fsyncs per update fall as load rises.

Storage faults heal. A commit that fails for a transient reason (another process holds the
write lock, the disk is full, an I/O error: :class:`~accord.engine.errors.TransientStorageError`)
is retried with capped exponential backoff until it succeeds, and meanwhile the relay *holds
writers back*: :meth:`CommitPipeline.submit` waits, so each connection's reader stops reading
its socket (TCP back-pressure; nobody is closed). Nothing of the failing batch is forwarded or
acknowledged before it is stored, so a retry never acknowledges twice or loses anything that
was acknowledged. :meth:`CommitPipeline.health` (``/healthz``) says 503 with the store, the
calendars and the error while writes are held, 200 once they resume; ``/metrics`` counts the
retries and shows the fault. One WARNING line when writes are held back, one INFO line when
they resume. A fatal failure (a corrupt database) stops writes for good: writers are closed
with 1011 and ``/healthz`` names the error until the operator restores the file.

Named lifecycle points: :attr:`CommitPipeline.change_hooks` see every change as it is queued
(the admission's key index keeps in step with the document), :attr:`CommitPipeline.batch_hooks`
run after each batch is stored and forwarded (the home decides what just became durable).
:attr:`CommitPipeline.audit_source` gives each queued change the audit entries it brought
(:mod:`~accord.relay.audit`), stored in the same transaction as its row. A relay cluster's home
submits its decisions with a fence (:meth:`CommitPipeline.submit_withheld`); a row the store
refuses as fenced is dropped (never applied or forwarded) and counted in ``metrics.fenced_writes``.
:attr:`CommitPipeline.notice` fires after every batch, for anyone waiting on a condition.

A calendar whose log outgrew the compaction policy is compacted in a task of its own, from a
snapshot of its replica taken right after the batch (it holds every row stored so far): the
pipeline goes on committing meanwhile, so a compaction costs no writer a wait, and the store
orders the compaction's transaction with the appends. A compaction that fails leaves the log as
it is (logged) and is tried again once the log has grown by as much again.
:meth:`CommitPipeline.drain` waits for running compactions too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, cast

from accord.engine.audit import AuditRecord
from accord.engine.backoff import Backoff
from accord.engine.errors import CloseCode, StorageError, TransientStorageError
from accord.engine.model import CalendarId
from accord.engine.replica import Change
from accord.engine.session import Framing
from accord.engine.storage import FENCED, CompactionPolicy, Fence, FencedStorage, Storage
from accord.engine.storage.state_vectors import remember_spans

from .calendars import CalendarHandle
from .metrics import Metrics
from .notice import Notice

if TYPE_CHECKING:
    from .connection import Connection

log = logging.getLogger(__name__)
MAX_BATCH = 5000
# Retry a failing commit quickly at first, then about once a second: writes resume within a
# second of the fault clearing, and a long outage costs a few queries a second.
STORE_RETRY = Backoff(initial_s=0.05, factor=2.0, max_s=1.0, jitter=0.25)
NAMES_SHOWN = 5  # calendars named in a /healthz line (then "and N more")


@dataclass(frozen=True, slots=True)
class Health:
    """What ``/healthz`` says about the store: ``ok``, or why not (one line for the operator)."""

    ok: bool
    detail: str = ""


@dataclass(slots=True)
class Hold:
    """Writes held back while a transient store fault lasts (see the module docstring)."""

    error: TransientStorageError
    calendars: tuple[CalendarId, ...]  # of the batch being retried
    updates: int
    since: float  # time.monotonic()
    retries: int = 0

    def describe(self, now: float) -> str:
        """One line: which store and calendars, which error, for how long."""
        names = ", ".join(self.calendars[:NAMES_SHOWN])
        if len(self.calendars) > NAMES_SHOWN:
            names += f" and {len(self.calendars) - NAMES_SHOWN} more"
        return (f"writes held back for {now - self.since:.1f} s ({self.retries} retries; {self.updates} updates "
                f"of calendars {names} waiting): {self.error}")


@dataclass(slots=True)
class _Item:
    handle: CalendarHandle
    change: Change | None
    origin: Connection | None
    state_vector: bytes
    withheld: tuple[bytes, object] | None = None  # (update, origin): applied to the replica only once stored
    echo: bool = False  # forward to the origin too (it holds only part of the change)
    audit: list[AuditRecord] = field(default_factory=list)  # entries this change brought: stored with it
    reply: bytes | None = None  # sent to the origin only: the part of the change it lacks (its audit entries)
    fence: Fence | None = None  # stored only while this lease epoch is current (a cluster home's decisions)
    queued_at: float = field(default_factory=time.perf_counter)  # for accord_forward_wait_seconds

    @property
    def row(self) -> bytes | None:
        """The update this item stores (None: an acknowledgement only)."""
        if self.withheld is not None:
            return self.withheld[0]
        return self.change.update if self.change is not None else None


class CommitPipeline:
    """Persist, then forward and acknowledge, in arrival order (see module docstring)."""

    def __init__(self, storage: Storage, metrics: Metrics, *, max_queue: int = 10_000,
                 compaction: CompactionPolicy | None = None, notice: Notice | None = None,
                 retry: Backoff = STORE_RETRY, drain_timeout_s: float = 30.0, held_drain_timeout_s: float = 5.0) -> None:
        self.storage = storage
        self.metrics = metrics
        self.compaction = compaction or CompactionPolicy()
        self.retry = retry
        self.drain_timeout_s = drain_timeout_s
        self.held_drain_timeout_s = held_drain_timeout_s  # the same while the store is failing already
        # Readers get back-pressure in submit(); the relay's own writes (decisions, made while a
        # batch commits) must never wait or fail on a full queue, so the queue itself is unbounded.
        self.max_queue = max_queue
        self.notice = notice or Notice()
        self.change_hooks: list[Callable[[CalendarHandle, Change], None]] = []
        self.batch_hooks: list[Callable[[list[CalendarHandle]], None]] = []
        self.audit_source: Callable[[CalendarHandle], list[AuditRecord]] | None = None
        self._queue: asyncio.Queue[_Item] = asyncio.Queue()
        self._space = asyncio.Event()
        self._space.set()
        self._task: asyncio.Task[None] | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self.busy: set[CalendarId] = set()
        self.failed: StorageError | None = None  # fatal: writes are refused until a restart
        self.hold: Hold | None = None  # transient: writes wait while the batch is retried
        self._releasing = False  # shutting down: nobody is held back any more
        self._compactions: dict[CalendarId, asyncio.Task[None]] = {}  # one at a time per calendar

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="commit-pipeline")

    async def submit(self, handle: CalendarHandle, change: Change | None, origin: Connection | None, *,
                     echo: bool = False, reply: bytes | None = None) -> None:
        """Queue a change (or, with ``change=None``, just an acknowledgement) for commit.

        ``echo``: the change holds more than ``origin`` sent (the relay's receipts): forward it
        to ``origin`` as well. ``reply``: send ``origin`` this update instead (the part it lacks).

        Waits when ``max_queue`` items are queued, and while the store is failing (writes are
        held back until a retry succeeds), which slows the submitting reader down (back-pressure).

        Raises:
            StorageError: the store failed for good (see the module docstring).
        """
        await self._room(lambda: self.hold is not None or self._queue.qsize() >= self.max_queue)
        handle.touch()
        state_vector = change.state_vector if change is not None else handle.replica.state_vector()
        self._enqueue(_Item(handle, change, origin, state_vector, echo=echo, reply=None if echo else reply))

    async def writable(self) -> None:
        """Return at once, or once a failing store took writes again (held back meanwhile).

        The relay waits here before it hands a calendar to a new subscriber: while a commit is
        retried, the replicas hold changes that are not stored yet, and a STEP2 must not carry them.

        Raises:
            StorageError: the store failed for good.
        """
        await self._room(lambda: self.hold is not None)

    def release_held(self) -> None:
        """Stop holding readers back (the relay is shutting down, and a held reader keeps its
        connection open). What they submit is still queued, and :meth:`close` stores it if the
        store recovers in time; none of it is acknowledged otherwise."""
        self._releasing = True
        self._space.set()

    async def _room(self, full: Callable[[], bool]) -> None:
        while full() and self.failed is None and not self._releasing:
            self._space.clear()
            self.metrics.connections_held += 1
            try:
                await self._space.wait()
            finally:
                self.metrics.connections_held -= 1
        if self.failed is not None:
            raise self.failed

    def submit_local(self, handle: CalendarHandle) -> None:
        """Queue the relay's own writes (decisions, home marker) captured by the replica."""
        for change in handle.replica.take_changes():
            self._enqueue(_Item(handle, change, None, change.state_vector))

    def submit_withheld(self, handle: CalendarHandle, update: bytes, origin: object, fence: Fence | None = None) -> None:
        """Queue an update the replica does not hold yet (the home's decisions): it is stored,
        then applied to the replica (tagged ``origin``) and forwarded, so nobody sees it before
        it is durable: not a subscriber's STEP2, not a peer. With ``fence`` (a cluster's home;
        the store must be a :class:`FencedStorage`) it is dropped, never applied, if the store
        refuses it because the lease moved on."""
        self._enqueue(_Item(handle, None, None, b"", (update, origin), fence=fence))

    def _enqueue(self, item: _Item) -> None:
        if item.change is not None:
            if item.change.before_state:  # the store then need not read the update for its spans
                remember_spans(item.change.update, item.change.before_state, item.change.state_vector)
            self._observe(item.handle, item.change)
            if self.audit_source is not None:
                item.audit = self.audit_source(item.handle)
        self._idle.clear()
        self.busy.add(item.handle.name)
        self._queue.put_nowait(item)

    async def health(self) -> Health:
        """Whether writes are going through and the store answers (for /healthz)."""
        if self.failed is not None:
            return Health(False, f"store failed; writes are refused until the relay restarts: {self.failed}")
        if self.hold is not None:
            return Health(False, self.hold.describe(time.monotonic()))
        try:
            await self.storage.get_meta("healthz")
        except (StorageError, OSError, ValueError) as exc:
            log.warning("health check failed", extra={"error": str(exc)})
            return Health(False, f"store does not answer: {exc}")
        return Health(True)

    async def drain(self) -> None:
        """Wait until everything submitted so far is committed and forwarded, and the
        compactions it started are done."""
        while not self._queue.empty() or not self._idle.is_set() or self._compactions:
            await self._idle.wait()
            if self._compactions:
                await asyncio.gather(*self._compactions.values(), return_exceptions=True)
            if not self._queue.empty():
                await asyncio.sleep(0)

    async def close(self) -> None:
        """Drain, then stop the pipeline task. Waits up to ``drain_timeout_s`` (``held_drain_timeout_s``
        if the store is failing already); what is still unstored then was never acknowledged."""
        if self.failed is None:
            try:
                async with asyncio.timeout(self.drain_timeout_s if self.hold is None else self.held_drain_timeout_s):
                    await self.drain()
            except TimeoutError:
                log.error("stopping with updates not stored; they were never acknowledged, so their senders "
                          "still hold them and send them again",
                          extra={"queued": self._queue.qsize(), "held": self.hold is not None})
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        for task in list(self._compactions.values()):
            task.cancel()
        await asyncio.gather(*self._compactions.values(), return_exceptions=True)

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
                self.hold = None
                self.metrics.store_failing = "fatal"
                self._space.set()  # waiting submitters raise the failure instead of hanging
                log.error("store commit failed for good; relay stops accepting writes until it is restarted",
                          extra={"error": str(exc), "calendars": len({item.handle.name for item in batch})})
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
        fences = [item.fence for item in batch if item.row is not None]
        audit = [record for item in batch for record in item.audit]
        seqs = await self._store(rows, audit, fences) if rows else []
        stored_at = time.perf_counter()  # forwarded right after: accord_forward_wait_seconds
        waits = self.metrics.forward_wait_seconds
        acks: dict[tuple[Connection, CalendarId], bytes] = {}
        touched: dict[CalendarId, CalendarHandle] = {}
        outgoing: dict[Connection, list[bytes]] = {}  # per connection, in order: one socket write per batch
        index = 0
        for item in batch:
            handle = item.handle
            touched[handle.name] = handle
            if item.row is not None:
                index += 1
                if seqs[index - 1] == FENCED:  # a deposed home's write: never stored, never applied
                    self.metrics.fenced_writes += 1
                    continue
                handle.rows_in_log += 1
                handle.log_bytes += len(item.row)
                handle.last_seq = seqs[index - 1]
            if item.withheld is not None:  # stored now: apply it (None if it brought nothing new)
                update, origin = item.withheld
                item.change = handle.replica.apply(update, origin=origin)
                if item.change is not None:
                    self._observe(handle, item.change)
            if item.change is not None:
                waits.observe(stored_at - item.queued_at)
                handle.committed = item.change.state_vector
                self._forward(handle, item.change.update, None if item.echo else item.origin, outgoing)
                if item.reply is not None and item.origin is not None and item.origin in handle.subscribers:
                    outgoing.setdefault(item.origin, []).append(item.origin.session.update(handle.name, item.reply))
                    self.metrics.updates_out += 1
            if item.origin is not None:
                acks[(item.origin, handle.name)] = item.state_vector
        for connection, messages in outgoing.items():
            connection.send_all(messages)
        for (connection, name), state_vector in acks.items():
            connection.acknowledge(name, state_vector)
        handles = list(touched.values())
        for hook in self.batch_hooks:
            hook(handles)
        for handle in handles:
            if (self.compaction.should_compact(handle.rows_in_log, handle.log_bytes, handle.snapshot_bytes)
                    and handle.rows_in_log >= handle.compact_retry_rows
                    and handle.name not in self._compactions):
                task = asyncio.create_task(self._compact(handle), name=f"compact-{handle.name}")
                self._compactions[handle.name] = task
                task.add_done_callback(self._compacted)

    async def _store(self, rows: list[tuple[CalendarId, bytes]], audit: list[AuditRecord],
                     fences: list[Fence | None]) -> list[int]:
        """Append ``rows`` in one commit, retrying transient faults until it succeeds (writers
        are held back meanwhile); a fatal StorageError propagates."""
        attempt = 0
        while True:
            started = time.perf_counter()
            try:
                if any(fences):
                    fenced = cast(FencedStorage, self.storage)
                    seqs = await fenced.append_many(rows, audit=audit, fences=fences)
                else:
                    seqs = await (self.storage.append_many(rows, audit=audit) if audit else self.storage.append_many(rows))
            except TransientStorageError as exc:
                self._held(exc, rows)
                await asyncio.sleep(self.retry.delay_s(attempt))
                attempt += 1
                continue
            self.metrics.commit_seconds.observe(time.perf_counter() - started)
            if self.hold is not None:
                self._resumed()
            return seqs

    def _held(self, error: TransientStorageError, rows: list[tuple[CalendarId, bytes]]) -> None:
        self.metrics.store_retries[error.fault] += 1
        self.metrics.store_failing = error.fault
        hold = self.hold
        if hold is None:
            calendars = tuple(dict.fromkeys(name for name, _ in rows))
            self.hold = Hold(error, calendars, len(rows), time.monotonic())
            log.warning("store failing; writes held back and retried",
                        extra={"fault": error.fault, "store": error.store, "calendars": len(calendars),
                               "calendar": calendars[0], "updates": len(rows), "error": error.detail})
        else:
            if error.fault is not hold.error.fault:
                log.warning("store failing differently; writes still held back",
                            extra={"fault": error.fault, "store": error.store, "error": error.detail})
            hold.error = error
            hold.retries += 1
        self.notice.notify()

    def _resumed(self) -> None:
        hold = self.hold
        assert hold is not None
        self.hold = None
        self.metrics.store_failing = ""
        log.info("store writes resumed", extra={"held_s": round(time.monotonic() - hold.since, 2),
                                                "retries": hold.retries + 1, "updates": hold.updates,
                                                "calendars": len(hold.calendars)})
        self._space.set()  # held writers go on
        self.notice.notify()

    def deliver_stored(self, handle: CalendarHandle, change: Change) -> None:
        """Forward a change that is stored already (another process of a relay cluster stored
        it, :mod:`~accord.relay.cluster`) to every subscriber, as a peer's committed update is:
        observed, forwarded, never stored or acknowledged again here."""
        handle.committed = change.state_vector
        self._observe(handle, change)
        outgoing: dict[Connection, list[bytes]] = {}
        self._forward(handle, change.update, None, outgoing)
        for connection, messages in outgoing.items():
            connection.send_all(messages)

    def _observe(self, handle: CalendarHandle, change: Change) -> None:
        for hook in self.change_hooks:
            hook(handle, change)

    def _forward(self, handle: CalendarHandle, update: bytes, origin: Connection | None,
                 outgoing: dict[Connection, list[bytes]]) -> None:
        """Queue ``update`` in ``outgoing`` for every subscriber but its origin, framed once per framing."""
        framed: dict[Framing, bytes] = {}
        for connection in handle.subscribers:
            if connection is origin:
                continue  # never echo an update back to where it came from
            session = connection.session
            data = framed.get(session.framing)
            if data is None:
                data = framed[session.framing] = session.update(handle.name, update)
            outgoing.setdefault(connection, []).append(data)
            self.metrics.updates_out += 1

    def _compacted(self, task: asyncio.Task[None]) -> None:
        for name, running in list(self._compactions.items()):
            if running is task:
                del self._compactions[name]

    async def _compact(self, handle: CalendarHandle) -> None:
        started = time.perf_counter()
        snapshot = handle.replica.full_state()  # includes every committed row, maybe more: fine
        upto = handle.last_seq
        before, bytes_before = handle.rows_in_log, handle.log_bytes
        try:
            await self.storage.compact(handle.name, upto, snapshot)
        except StorageError as exc:  # the log stays as it is: try again once it grew as much again
            handle.compact_retry_rows = handle.rows_in_log + self.compaction.max_rows
            fault = exc.fault if isinstance(exc, TransientStorageError) else "fatal"
            log.log(logging.WARNING if fault != "fatal" else logging.ERROR, "compaction postponed",
                    extra={"calendar": handle.name, "fault": fault, "rows": handle.rows_in_log, "error": str(exc)})
            return
        handle.compact_retry_rows = 0
        handle.rows_in_log -= before - 1  # rows stored while it ran stay in the log, after the snapshot
        handle.log_bytes += len(snapshot) - bytes_before
        handle.snapshot_bytes = len(snapshot)
        log.info(
            "calendar compacted",
            extra={"calendar": handle.name, "rows_before": before, "bytes": len(snapshot),
                   "ms": round((time.perf_counter() - started) * 1000, 1)},
        )
