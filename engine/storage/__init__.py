"""Storage: an append-only log of updates per calendar, behind a small Protocol.

Adapters (:class:`SqliteStorage`, :class:`MemoryStorage`, and ``postgres.PostgresStorage`` for
relay clusters: :func:`open_storage` picks one from a ``--db`` value) are dumb: append, load, replace a
prefix with a snapshot, key/value metadata, and each calendar's stored state vector, kept in
step with its log by the rules in :mod:`.state_vectors`. Policy lives here once: when to compact
(:class:`CompactionPolicy`) and how (:func:`merge_log`, chunked because ``merge_updates`` of
many inputs in one call is super-linear).

These are the only engine modules that await; model and sync code never import them.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import pycrdt

from ..audit import AuditRecord, AuditRow
from ..errors import StoreUnavailable
from ..model import CalendarId
from .faults import classify_error
from .memory import MemoryStorage
from .sqlite import SqliteStorage

MERGE_CHUNK = 500


class Storage(Protocol):
    """What relays and terminals need from a store.

    ``append`` returns only once the update is durable: a crash right after it returns loses
    nothing. Concurrent appends may share one commit (group commit).

    Writes raise :class:`~engine.errors.TransientStorageError` when they failed for a reason
    that may pass (another process holds the write lock, the disk is full, an I/O error):
    nothing of that call was stored, and calling again later is safe. Any other
    :class:`~engine.errors.StorageError` is fatal (:class:`~engine.errors.StoreCorrupt`: the
    file is damaged). :func:`classify_error` makes that call for the driver's exceptions.
    """

    async def append(self, calendar: CalendarId, update: bytes) -> int:
        """Durably append one update; return its sequence number (increasing per calendar; SQLite's
        increase across the whole store, PostgreSQL's count each calendar's rows from 1)."""
        ...

    async def append_many(self, items: list[tuple[CalendarId, bytes]], *,
                          audit: list[AuditRecord] | None = None) -> list[int]:
        """Durably append several updates in one commit; return their sequence numbers.

        ``audit``: entries appended to the audit log in the same commit, chained per calendar
        (:func:`engine.audit.chain`); an entry whose calendar and key the log holds is skipped."""
        ...

    async def audit_log(self, calendar: CalendarId) -> list[AuditRow]:
        """The calendar's audit rows in chain order (empty if none)."""
        ...

    async def audit_calendars(self) -> list[CalendarId]:
        """Names of the calendars with audit rows."""
        ...

    async def load(self, calendar: CalendarId) -> list[bytes]:
        """Every stored update of ``calendar``, oldest first. Raises CorruptRecord."""
        ...

    async def log_length(self, calendar: CalendarId) -> tuple[int, int]:
        """``(row count, highest seq)`` of the calendar's log (``(0, 0)`` if empty)."""
        ...

    async def compact(self, calendar: CalendarId, upto_seq: int, snapshot: bytes) -> None:
        """Atomically replace rows with ``seq <= upto_seq`` by ``snapshot``, which must
        include everything they held."""
        ...

    async def calendars(self) -> list[CalendarId]:
        """Names of all calendars with at least one stored update."""
        ...

    async def state_vectors(self, calendars: Iterable[CalendarId]) -> dict[CalendarId, bytes]:
        """The stored state vector (:mod:`.state_vectors`) of each of ``calendars`` that has rows;
        it is updated in the same commit as the rows and never claims more than the log holds."""
        ...

    async def state_vector_page(self, after: str, limit: int) -> list[tuple[CalendarId, bytes]]:
        """Up to ``limit`` ``(calendar, state vector)`` pairs with names after ``after``, by name."""
        ...

    async def get_meta(self, key: str) -> str | None:
        """A small metadata value (e.g. a terminal's acknowledged state), or None."""
        ...

    async def set_meta(self, key: str, value: str) -> None:
        """Durably store a small metadata value."""
        ...

    async def close(self) -> None:
        """Flush pending appends and close."""
        ...


FENCED = 0
"""The sequence number :meth:`FencedStorage.append_many` gives a row it refused: its fence is stale."""


@dataclass(frozen=True, slots=True)
class Fence:
    """A fencing token: "store this only while lease ``name`` is at ``epoch``".

    The holder of a lease (a relay cluster's home, :mod:`accord.relay.lease`) bumps the lease's
    epoch in the store when it takes over; a row written under an older epoch (a deposed holder's
    late decision) is refused in the very transaction that would store it."""

    name: str
    epoch: int


class FencedStorage(Storage, Protocol):
    """A store shared by several processes that can fence writes (PostgreSQL)."""

    async def append_many(self, items: list[tuple[CalendarId, bytes]], *,
                          audit: list[AuditRecord] | None = None,
                          fences: list[Fence | None] | None = None) -> list[int]:
        """As :meth:`Storage.append_many`; ``fences`` (one per item, None: unfenced): an item whose
        fence is not the lease's current epoch is not stored and gets seq :data:`FENCED`."""
        ...


@dataclass(frozen=True, slots=True)
class CompactionPolicy:
    """Compact a calendar's log once it holds more than ``max_rows`` updates *and* the rows written
    since its snapshot are at least as many bytes as the snapshot.

    A compaction encodes and stores the whole document, so compacting a large calendar every
    ``max_rows`` updates costs work in proportion to its size each time (a 4 MB calendar taking
    1,000 edits a second was re-encoded and rewritten every second). Waiting until the log has
    grown by the snapshot's size keeps compaction's cost per stored byte constant, and a load
    reads at most about twice the document. Small calendars compact every ``max_rows`` as before.
    """

    max_rows: int = 1000

    def should_compact(self, rows: int, log_bytes: int = 0, snapshot_bytes: int = 0) -> bool:
        """True if a log of ``rows`` updates, ``log_bytes`` in all, whose first row (the last
        snapshot, if any) is ``snapshot_bytes``, is due for compaction."""
        return rows > self.max_rows and log_bytes - snapshot_bytes >= snapshot_bytes


def merge_log(updates: list[bytes]) -> bytes:
    """Merge updates into one, in chunks (``merge_updates`` is super-linear in its input count)."""
    if not updates:
        return b"\x00\x00"
    while len(updates) > 1:
        updates = [
            pycrdt.merge_updates(*updates[i : i + MERGE_CHUNK]) if len(updates[i : i + MERGE_CHUNK]) > 1 else updates[i]
            for i in range(0, len(updates), MERGE_CHUNK)
        ]
    return updates[0]


def is_postgres_url(target: object) -> bool:
    """True if ``target`` (a ``--db`` value) names a PostgreSQL database rather than a file."""
    return isinstance(target, str) and target.startswith(("postgresql://", "postgres://"))


def redact(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not at or ":" not in credentials:
        return url
    return f"{scheme}{sep}{credentials.split(':', 1)[0]}:***@{host}"


async def open_storage(target: str | Path, *, busy_timeout_ms: int = 5000) -> Storage:
    """Open the store a ``--db`` value names: a ``postgresql://`` URL (a shared PostgreSQL
    database, :class:`~engine.storage.postgres.PostgresStorage`) or a SQLite file path
    (``busy_timeout_ms``: see :meth:`SqliteStorage.open`).

    Raises:
        StoreUnavailable: the store cannot be opened, or a URL was given without asyncpg installed.
    """
    if is_postgres_url(target):
        assert isinstance(target, str)
        try:
            from .postgres import PostgresStorage
        except ImportError as exc:
            raise StoreUnavailable("a PostgreSQL store needs asyncpg: pip install 'accord[postgres]'") from exc
        return await PostgresStorage.open(target)
    return await SqliteStorage.open(Path(target), busy_timeout_ms=busy_timeout_ms)


__all__ = ["FENCED", "CompactionPolicy", "Fence", "FencedStorage",
           "MemoryStorage", "SqliteStorage", "Storage", "classify_error", "is_postgres_url", "merge_log",
           "open_storage", "redact"]
