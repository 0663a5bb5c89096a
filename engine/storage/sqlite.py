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
"""

from __future__ import annotations

import asyncio
import sqlite3
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import aiosqlite

from ..errors import CorruptRecord, StorageError, StoreUnavailable
from ..model import CalendarId
from .faults import classify_error

SCHEMA_VERSION = 1
SCHEMA = """
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
                foreign = {row[0] for row in tables} - {"updates", "meta", "sqlite_sequence"}
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

    async def append_many(self, items: list[tuple[CalendarId, bytes]]) -> list[int]:
        """Durably append updates; they commit together with whatever else is queued."""
        if self._closing:
            raise StorageError(f"store {self.path} is closed")
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(items, future))
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
                async with self._tx_lock:
                    await self._conn.execute("BEGIN IMMEDIATE")
                    try:
                        await self._conn.executemany("INSERT INTO updates (calendar, data, crc) VALUES (?, ?, ?)", rows)
                        cursor = await self._conn.execute("SELECT last_insert_rowid()")
                        last = (await cursor.fetchone() or (0,))[0]
                        await self._conn.execute("COMMIT")
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

    # ---- reads ---------------------------------------------------------------------------------

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
        cursor = await self._conn.execute("SELECT DISTINCT calendar FROM updates ORDER BY calendar")
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
