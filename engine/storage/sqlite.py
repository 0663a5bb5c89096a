"""SQLite storage on aiosqlite: WAL, durable commits, group commit, checksummed rows.

Appends from any number of tasks are queued and written by one writer task: every append
waiting while a commit runs goes into the next single transaction (group commit), so 100
concurrent writers cost about as many fsyncs as one. ``synchronous=FULL`` makes every commit
durable against power loss, not only against a killed process.

A failed commit is classified once (:func:`~engine.storage.faults.classify_error`): busy,
disk full and I/O errors raise :class:`~engine.errors.TransientStorageError` (nothing was
written; the caller may retry), a damaged file :class:`~engine.errors.StoreCorrupt`.
``busy_timeout_ms`` is how long SQLite itself waits for another process's write lock before
reporting busy; a relay keeps it short so that its pipeline, which retries and reports, decides.

Each row carries a CRC-32 of its bytes. A row that fails it raises :class:`CorruptRecord`
naming the calendar and row; nothing is deleted or "repaired"; other calendars keep working.

Beside the log, table ``calendar_states`` keeps each calendar's state vector (see
:mod:`.state_vectors`), written in the same transaction as the rows, so a relay can compare
calendars with a peer's without loading them. Schema version 1 stores (before state vectors)
are migrated on first open: every calendar's vector is computed from its log once, in one
transaction (a store of 100k small calendars takes tens of seconds), then ``user_version``
becomes 2; an older accord then refuses the store ("upgrade accord").

Table ``audit`` holds the audit trail (:mod:`engine.audit`): rows appended with
``append_many(..., audit=...)`` in the same transaction as the update rows, hash-chained per
calendar, never rewritten (compaction leaves it alone). Version 2 stores get the empty table on
first open (schema version 3: additive, nothing else changes).
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from ..audit import GENESIS, AuditRecord, AuditRow, chain
from ..errors import CorruptRecord, StorageError, StoreUnavailable
from ..model import CalendarId
from ..protocol import decode_state_vector, encode_state_vector
from .faults import classify_error
from .state_vectors import Spans, advance, log_state_vector, update_spans

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3
BIG_ROWS_BYTES = 256 * 1024  # rows past this are read for their spans off the event loop
SQL_VARIABLES = 500  # names per IN (...) query
STATES_SCHEMA = """
CREATE TABLE IF NOT EXISTS calendar_states (calendar TEXT PRIMARY KEY, state_vector BLOB NOT NULL) WITHOUT ROWID;
"""
AUDIT_SCHEMA = """
CREATE TABLE IF NOT EXISTS audit (
    calendar TEXT NOT NULL,
    n INTEGER NOT NULL,
    key TEXT NOT NULL,
    entry TEXT NOT NULL,
    prev TEXT NOT NULL,
    hash TEXT NOT NULL,
    via TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (calendar, n)
) WITHOUT ROWID;
CREATE UNIQUE INDEX IF NOT EXISTS audit_keys ON audit (calendar, key);
"""
SCHEMA = STATES_SCHEMA + AUDIT_SCHEMA + """
CREATE TABLE IF NOT EXISTS updates (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    calendar TEXT NOT NULL,
    data BLOB NOT NULL,
    crc INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS updates_by_calendar ON updates (calendar, seq);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


@dataclass(slots=True)
class _Pending:
    items: list[tuple[CalendarId, bytes]]
    future: asyncio.Future[list[int]]
    audit: list[AuditRecord] = field(default_factory=list)


@dataclass(slots=True)
class StoreStats:
    """Counters for metrics and benchmarks."""

    commits: int = 0
    rows: int = 0
    commit_seconds: list[float] = field(default_factory=list)


class SqliteStorage:
    """The default store. Open with ``await SqliteStorage.open(path)``; close with ``await store.close()``.

    Raises:
        StoreUnavailable: the file cannot be opened, is not an accord store, or is from a newer version.
    """

    def __init__(self, path: Path, conn: aiosqlite.Connection) -> None:
        self.path = path
        self._conn = conn
        self._queue: list[_Pending] = []
        self._wake = asyncio.Event()
        self._closing = False
        self.stats = StoreStats()
        self._tx_lock = asyncio.Lock()  # one aiosqlite connection: transactions must not interleave
        self._writer = asyncio.create_task(self._write_loop(), name=f"sqlite-writer:{path.name}")
        self.on_commit: list[object] = []
        self._audit_tails: dict[str, tuple[int, str]] = {}  # calendar -> (n, hash) of its last committed audit row

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000) -> SqliteStorage:
        """Open (creating if missing) the store at ``path``; SQLite waits up to ``busy_timeout_ms``
        for another process's write lock before an append raises TransientStorageError."""
        target = Path(path)
        try:
            conn = await aiosqlite.connect(target, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open store {target}: {exc}") from exc
        try:
            # Check what the file is before changing anything: a foreign database must be left
            # byte-identical (switching it to WAL would rewrite its header).
            await conn.execute(f"PRAGMA busy_timeout={int(busy_timeout_ms)}")
            version = (await (await conn.execute("PRAGMA user_version")).fetchone() or (0,))[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"store {target} has schema version {version}; this accord knows up to {SCHEMA_VERSION}: upgrade accord"
                )
            if version == 0:
                tables = await (await conn.execute("SELECT name FROM sqlite_master WHERE type='table'")).fetchall()
                foreign = {row[0] for row in tables} - {"updates", "meta", "sqlite_sequence", "calendar_states", "audit"}
                if foreign:
                    raise StoreUnavailable(
                        f"{target} is a SQLite database but not an accord store (it has tables {sorted(foreign)}); "
                        "pass another --db path"
                    )
            await conn.execute("PRAGMA journal_mode=WAL")
            await conn.execute(f"PRAGMA synchronous={synchronous}")
            if version == 0:
                await conn.executescript(SCHEMA)
                await conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            else:
                if version == 1:
                    await _migrate_to_state_vectors(conn, target)
                if version < SCHEMA_VERSION:
                    await _migrate_to_audit(conn)
        except sqlite3.DatabaseError as exc:
            await conn.close()
            raise StoreUnavailable(f"cannot use store {target}: {exc} (is it an accord database?)") from exc
        except BaseException:
            await conn.close()
            raise
        return cls(target, conn)

    # ---- appends (group commit) ----------------------------------------------------------------

    async def append(self, calendar: CalendarId, update: bytes) -> int:
        """Durably append one update; return its sequence number."""
        return (await self.append_many([(calendar, update)]))[0]

    async def append_many(self, items: list[tuple[CalendarId, bytes]], *,
                          audit: list[AuditRecord] | None = None) -> list[int]:
        """Durably append updates, and ``audit`` entries to the audit log (chained, in the same
        transaction); they commit together with whatever else is queued."""
        if self._closing:
            raise StorageError(f"store {self.path} is closed")
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(items, future, audit or []))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._closing:  # once closing, drain the queue without waiting for another wake-up
                await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                if self._closing:
                    return
                continue
            rows = [
                (calendar, bytes(update), zlib.crc32(update)) for pending in batch for calendar, update in pending.items
            ]
            started = loop.time()
            try:
                spans = await _spans_of(rows)
                async with self._tx_lock:
                    await self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        await self._conn.executemany("INSERT INTO updates (calendar, data, crc) VALUES (?, ?, ?)", rows)
                        await self._advance_states([row[0] for row in rows], spans)
                        audit = [record for pending in batch for record in pending.audit]
                        tails = await self._append_audit(audit) if audit else {}
                        cursor = await self._conn.execute("SELECT last_insert_rowid()")
                        last = (await cursor.fetchone() or (0,))[0]
                        await self._conn.execute("COMMIT")
                        self._audit_tails.update(tails)  # committed: the next rows follow these
                    except BaseException:
                        await self._rollback()
                        raise
            except Exception as exc:  # a failed commit fails every append in it, loudly
                await self._rollback()
                error = classify_error(exc, str(self.path), "commit")
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            self.stats.commits += 1
            self.stats.rows += len(rows)
            if len(self.stats.commit_seconds) < 100_000:
                self.stats.commit_seconds.append(loop.time() - started)
            seq = last - len(rows) + 1
            for pending in batch:
                count = len(pending.items)
                if not pending.future.done():
                    pending.future.set_result(list(range(seq, seq + count)))
                seq += count

    async def _advance_states(self, calendars: list[CalendarId], spans: list[Spans]) -> None:
        """Move the stored state vectors past rows just inserted (inside their transaction)."""
        stored = await self._state_vectors_unlocked(dict.fromkeys(calendars))
        clocks = {name: decode_state_vector(stored[name]) if name in stored else {} for name in dict.fromkeys(calendars)}
        moved = {name for name in clocks if name not in stored}
        for name, row_spans in zip(calendars, spans, strict=True):
            if advance(clocks[name], row_spans):
                moved.add(name)
        if moved:
            await self._conn.executemany(
                "INSERT INTO calendar_states (calendar, state_vector) VALUES (?, ?) "
                "ON CONFLICT (calendar) DO UPDATE SET state_vector = excluded.state_vector",
                [(name, encode_state_vector(clocks[name])) for name in moved],
            )

    async def _append_audit(self, records: list[AuditRecord]) -> dict[str, tuple[int, str]]:
        """Chain and insert audit rows (inside the update rows' transaction); return the new
        tails, for the cache once the transaction committed. Entries reach a store once (an
        entry key is added to a document once, and loads are not reported), so a repeated key
        in one batch is the only repeat to skip; the unique index refuses any other."""
        by_calendar: dict[str, dict[str, AuditRecord]] = {}
        for record in records:
            by_calendar.setdefault(record.calendar, {}).setdefault(record.key, record)
        rows: list[AuditRow] = []
        tails: dict[str, tuple[int, str]] = {}
        for name, group in by_calendar.items():
            tail = self._audit_tails.get(name)
            if tail is None:
                cursor = await self._conn.execute(
                    "SELECT n, hash FROM audit WHERE calendar = ? ORDER BY n DESC LIMIT 1", (name,))
                last = await cursor.fetchone()
                tail = (int(last[0]), str(last[1])) if last else (0, GENESIS)
            chained = chain(name, tail, list(group.values()))
            rows += chained
            tails[name] = (chained[-1].n, chained[-1].hash)
        await self._conn.executemany(
            "INSERT INTO audit (calendar, n, key, entry, prev, hash, via) VALUES (?, ?, ?, ?, ?, ?, ?)",
            [(r.calendar, r.n, r.key, r.entry, r.prev, r.hash, r.via) for r in rows])
        return tails

    # ---- reads ---------------------------------------------------------------------------------

    async def audit_log(self, calendar: CalendarId) -> list[AuditRow]:
        """The calendar's audit rows, in chain order (unverified: ``accord store check`` verifies)."""
        try:
            async with self._tx_lock:
                cursor = await self._conn.execute(
                    "SELECT n, key, entry, prev, hash, via FROM audit WHERE calendar = ? ORDER BY n", (calendar,))
                found = await cursor.fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"cannot read the audit log of {calendar!r} from {self.path}: {exc}") from exc
        return [AuditRow(calendar, int(n), str(key), str(entry), str(prev), str(digest), str(via))
                for n, key, entry, prev, digest, via in found]

    async def audit_calendars(self) -> list[CalendarId]:
        """Calendars with at least one audit row."""
        async with self._tx_lock:
            cursor = await self._conn.execute("SELECT DISTINCT calendar FROM audit ORDER BY calendar")
            return [CalendarId(row[0]) for row in await cursor.fetchall()]

    async def state_vectors(self, calendars: Iterable[CalendarId]) -> dict[CalendarId, bytes]:
        """The stored state vector of each of ``calendars`` that has rows (others are left out)."""
        async with self._tx_lock:  # never read a commit that is still under way
            return await self._state_vectors_unlocked(calendars)

    async def _state_vectors_unlocked(self, calendars: Iterable[CalendarId]) -> dict[CalendarId, bytes]:
        names = list(calendars)
        out: dict[CalendarId, bytes] = {}
        for i in range(0, len(names), SQL_VARIABLES):
            chunk = names[i : i + SQL_VARIABLES]
            cursor = await self._conn.execute(
                f"SELECT calendar, state_vector FROM calendar_states WHERE calendar IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            out.update((CalendarId(name), bytes(sv)) for name, sv in await cursor.fetchall())
        return out

    async def state_vector_page(self, after: str, limit: int) -> list[tuple[CalendarId, bytes]]:
        """Up to ``limit`` ``(calendar, stored state vector)`` pairs with names after ``after``, by name
        (page through every calendar: pass the last name of one page to get the next)."""
        async with self._tx_lock:
            cursor = await self._conn.execute(
                "SELECT calendar, state_vector FROM calendar_states WHERE calendar > ? ORDER BY calendar LIMIT ?",
                (after, limit),
            )
            return [(CalendarId(name), bytes(sv)) for name, sv in await cursor.fetchall()]

    async def load(self, calendar: CalendarId) -> list[bytes]:
        """Every update of ``calendar``, oldest first, checksums verified."""
        try:
            cursor = await self._conn.execute(
                "SELECT seq, data, crc FROM updates WHERE calendar = ? ORDER BY seq", (calendar,)
            )
            rows = await cursor.fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"cannot read calendar {calendar!r} from {self.path}: {exc}") from exc
        out = []
        for seq, data, crc in rows:
            if not isinstance(data, bytes) or zlib.crc32(data) != crc:
                raise CorruptRecord(calendar, seq, "checksum mismatch")
            out.append(data)
        return out

    async def log_length(self, calendar: CalendarId) -> tuple[int, int]:
        cursor = await self._conn.execute(
            "SELECT count(*), coalesce(max(seq), 0) FROM updates WHERE calendar = ?", (calendar,)
        )
        count, top = await cursor.fetchone() or (0, 0)
        return int(count), int(top)

    async def compact(self, calendar: CalendarId, upto_seq: int, snapshot: bytes) -> None:
        """Replace rows ``<= upto_seq`` by one snapshot row, in one transaction."""
        try:
            async with self._tx_lock:
                await self._compact_locked(calendar, upto_seq, snapshot)
        except (sqlite3.Error, OSError) as exc:
            raise classify_error(exc, str(self.path), f"compacting {calendar!r}") from exc

    async def _compact_locked(self, calendar: CalendarId, upto_seq: int, snapshot: bytes) -> None:
        await self._conn.execute("BEGIN IMMEDIATE")
        try:
            await self._conn.execute("DELETE FROM updates WHERE calendar = ? AND seq <= ?", (calendar, upto_seq))
            await self._conn.execute(
                "INSERT INTO updates (seq, calendar, data, crc) VALUES (?, ?, ?, ?)",
                (upto_seq, calendar, bytes(snapshot), zlib.crc32(snapshot)),
            )
            # The snapshot may hold more than the rows it replaces (the replica ran ahead): the
            # stored vector follows what the log now holds.
            await self._advance_states([calendar], [update_spans(snapshot)])
            await self._conn.execute("COMMIT")
        except BaseException:
            await self._rollback()
            raise

    async def _rollback(self) -> None:
        """End a failed transaction, never masking the failure: SQLite rolls back by itself on
        busy, disk-full and I/O errors, and a ROLLBACK then raises "no transaction is active"."""
        if self._conn.in_transaction:
            try:
                await self._conn.execute("ROLLBACK")
            except (sqlite3.Error, ValueError):
                pass

    async def calendars(self) -> list[CalendarId]:
        cursor = await self._conn.execute("SELECT calendar FROM calendar_states ORDER BY calendar")
        return [CalendarId(row[0]) for row in await cursor.fetchall()]

    async def rows(self, calendar: CalendarId) -> list[tuple[int, bytes, int]]:
        """Raw ``(seq, data, crc)`` rows, unverified (for ``accord store check``)."""
        cursor = await self._conn.execute("SELECT seq, data, crc FROM updates WHERE calendar = ? ORDER BY seq", (calendar,))
        return [(int(r[0]), r[1], int(r[2])) for r in await cursor.fetchall()]

    async def integrity_check(self) -> list[str]:
        """SQLite's own page-level check; ``["ok"]`` when healthy."""
        cursor = await self._conn.execute("PRAGMA integrity_check")
        return [str(row[0]) for row in await cursor.fetchall()]

    async def get_meta(self, key: str) -> str | None:
        try:
            cursor = await self._conn.execute("SELECT value FROM meta WHERE key = ?", (key,))
            row = await cursor.fetchone()
        except (sqlite3.Error, OSError) as exc:
            raise classify_error(exc, str(self.path), f"reading {key!r}") from exc
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        try:
            async with self._tx_lock:
                await self._conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))
        except (sqlite3.Error, OSError) as exc:
            raise classify_error(exc, str(self.path), f"saving {key!r}") from exc

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close the file."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        await self._writer
        await self._conn.close()


async def _spans_of(rows: list[tuple[CalendarId, bytes, int]]) -> list[Spans]:
    """Each row's spans; a batch with big rows (a first sync) is read in a thread, so the event
    loop keeps its share of the interpreter."""
    updates = [row[1] for row in rows]
    if sum(len(u) for u in updates) > BIG_ROWS_BYTES:
        return await asyncio.to_thread(lambda: [update_spans(u) for u in updates])
    return [update_spans(u) for u in updates]


async def _migrate_to_state_vectors(conn: aiosqlite.Connection, target: Path) -> None:
    """Schema 1 -> 2: compute every calendar's state vector from its log, once, in one transaction.
    Rows that fail their checksum are left out (the vector then claims less, never more)."""
    started = time.perf_counter()
    await conn.execute("BEGIN IMMEDIATE")
    try:
        await conn.execute(STATES_SCHEMA.strip())
        names = [row[0] for row in await (await conn.execute("SELECT DISTINCT calendar FROM updates")).fetchall()]
        for name in names:
            cursor = await conn.execute("SELECT data, crc FROM updates WHERE calendar = ? ORDER BY seq", (name,))
            updates = [bytes(data) for data, crc in await cursor.fetchall()
                       if isinstance(data, bytes) and zlib.crc32(data) == crc]
            sv = await asyncio.to_thread(log_state_vector, updates) if len(updates) > 100 else log_state_vector(updates)
            await conn.execute("INSERT OR REPLACE INTO calendar_states (calendar, state_vector) VALUES (?, ?)", (name, sv))
        await conn.execute("PRAGMA user_version=2")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
    log.info("store migrated: state vectors computed", extra={"store": str(target), "calendars": len(names),
                                                              "ms": round((time.perf_counter() - started) * 1000, 1)})


async def _migrate_to_audit(conn: aiosqlite.Connection) -> None:
    """Schema 2 -> 3: add the (empty) audit table; nothing else changes."""
    await conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in AUDIT_SCHEMA.split(";"):
            if statement.strip():
                await conn.execute(statement.strip())
        await conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        await conn.execute("COMMIT")
    except BaseException:
        await conn.execute("ROLLBACK")
        raise
