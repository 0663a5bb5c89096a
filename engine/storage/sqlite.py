"""SQLite storage: WAL, durable commits, group commit, checksummed rows, one writer thread.

Theory of operation. One thread per store owns a plain ``sqlite3`` connection and does every
query, in arrival order; coroutines hand it jobs through a queue and await a future. The thread
takes everything queued at once: consecutive appends go into one transaction (group commit:
every append waiting while a commit runs shares the next one, so 100 concurrent writers cost
about as many fsyncs as one), and it settles the futures of the whole batch with one call into
the event loop. The event loop never waits on the disk, and a commit costs one hand-over each
way rather than one per statement. ``synchronous=FULL`` makes every commit durable against power
loss, not only against a killed process; an append returns only after its commit.

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
import queue
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..audit import GENESIS, AuditRecord, AuditRow, chain
from ..errors import CorruptRecord, StorageError, StoreUnavailable
from ..model import CalendarId
from ..protocol import decode_state_vector, encode_state_vector
from .faults import classify_error
from .state_vectors import Spans, advance, log_state_vector, update_spans

log = logging.getLogger(__name__)
SCHEMA_VERSION = 3
SQL_VARIABLES = 500  # names per IN (...) query
MAX_PENDING_JOBS = 10_000  # callers wait (asynchronously) while this many jobs are queued
CACHED_CLOCKS = 4096  # decoded state vectors the writer keeps (calendars written recently)
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
INSERT_ROW = "INSERT INTO updates (calendar, data, crc) VALUES (?, ?, ?)"
UPSERT_STATE = ("INSERT INTO calendar_states (calendar, state_vector) VALUES (?, ?) "
                "ON CONFLICT (calendar) DO UPDATE SET state_vector = excluded.state_vector")
INSERT_AUDIT = "INSERT INTO audit (calendar, n, key, entry, prev, hash, via) VALUES (?, ?, ?, ?, ?, ?, ?)"

Query = Callable[[sqlite3.Connection], Any]
Clocks = dict[str, tuple[bytes, dict[int, int]]]  # calendar -> (stored state vector, decoded)
Outcome = tuple["asyncio.Future[Any]", Any, BaseException | None]  # (future, result, error)


@dataclass(slots=True)
class _Append:
    items: list[tuple[CalendarId, bytes]]
    audit: list[AuditRecord]
    future: asyncio.Future[list[int]]


@dataclass(slots=True)
class _Call:
    query: Query
    future: asyncio.Future[Any]
    stop: bool = False  # the last job: close the connection after it


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

    def __init__(self, path: Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000) -> None:
        """Use :meth:`open`; this only prepares the writer thread."""
        self.path = path
        self.stats = StoreStats()
        self._synchronous = synchronous
        self._busy_timeout_ms = busy_timeout_ms
        self._loop = asyncio.get_running_loop()
        self._jobs: queue.SimpleQueue[_Append | _Call] = queue.SimpleQueue()
        self._pending = 0
        self._room = asyncio.Event()
        self._room.set()
        self._closing = False
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._closed: asyncio.Future[None] | None = None
        # Used by the writer thread only: each calendar's last committed audit row, and the
        # state vectors it last wrote, decoded (checked against what is stored before use).
        self._audit_tails: dict[str, tuple[int, str]] = {}
        self._clocks: Clocks = {}
        self._thread = threading.Thread(target=self._serve, name=f"sqlite-writer:{path.name}", daemon=True)

    @classmethod
    async def open(cls, path: str | Path, *, synchronous: str = "FULL", busy_timeout_ms: int = 5000) -> SqliteStorage:
        """Open (creating if missing) the store at ``path``; SQLite waits up to ``busy_timeout_ms``
        for another process's write lock before an append raises TransientStorageError."""
        store = cls(Path(path), synchronous=synchronous, busy_timeout_ms=busy_timeout_ms)
        store._thread.start()
        try:
            await asyncio.shield(store._opened)
        except BaseException:
            await store.close()
            raise
        return store

    # ---- the writer thread ---------------------------------------------------------------------

    def _serve(self) -> None:
        """The writer thread: open the file, then run queued jobs in order, consecutive appends
        in one transaction, until the stop job."""
        try:
            conn = self._connect()
        except BaseException as exc:
            self._loop.call_soon_threadsafe(_resolve, self._opened, exc)
            return
        self._loop.call_soon_threadsafe(_resolve, self._opened, None)
        stopping = False
        while not stopping:
            batch = [self._jobs.get()]
            while True:
                try:
                    batch.append(self._jobs.get_nowait())
                except queue.Empty:
                    break
            outcomes: list[Outcome] = []
            commits: list[tuple[int, float]] = []
            appends: list[_Append] = []
            for job in batch:
                if stopping:  # queued behind the stop job (see _submit): the file is closed
                    outcomes.append((job.future, None, StorageError(f"store {self.path} is closed")))
                    continue
                if isinstance(job, _Append):
                    appends.append(job)
                    continue
                if appends:
                    outcomes += self._commit(conn, appends, commits)
                    appends = []
                outcomes.append(_call(conn, job))
                stopping = stopping or job.stop
            if appends:
                outcomes += self._commit(conn, appends, commits)
            if stopping:  # before close() returns: a checkpoint of a big WAL may take a while
                conn.close()
            try:
                self._loop.call_soon_threadsafe(self._settle, outcomes, commits)
            except RuntimeError:  # the event loop is gone: nobody is waiting any more
                if not stopping:
                    conn.close()
                return

    def _connect(self) -> sqlite3.Connection:
        target = self.path
        try:
            conn = sqlite3.connect(target, isolation_level=None)
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open store {target}: {exc}") from exc
        try:
            # Check what the file is before changing anything: a foreign database must be left
            # byte-identical (switching it to WAL would rewrite its header).
            conn.execute(f"PRAGMA busy_timeout={int(self._busy_timeout_ms)}")
            version = (conn.execute("PRAGMA user_version").fetchone() or (0,))[0]
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(
                    f"store {target} has schema version {version}; this accord knows up to {SCHEMA_VERSION}: upgrade accord"
                )
            if version == 0:
                tables = conn.execute("SELECT name FROM sqlite_master WHERE type='table'").fetchall()
                foreign = {row[0] for row in tables} - {"updates", "meta", "sqlite_sequence", "calendar_states", "audit"}
                if foreign:
                    raise StoreUnavailable(
                        f"{target} is a SQLite database but not an accord store (it has tables {sorted(foreign)}); "
                        "pass another --db path"
                    )
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute(f"PRAGMA synchronous={self._synchronous}")
            if version == 0:
                conn.executescript(SCHEMA)
                conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
            else:
                if version == 1:
                    _migrate_to_state_vectors(conn, target)
                if version < SCHEMA_VERSION:
                    _migrate_to_audit(conn)
        except sqlite3.DatabaseError as exc:
            conn.close()
            raise StoreUnavailable(f"cannot use store {target}: {exc} (is it an accord database?)") from exc
        except BaseException:
            conn.close()
            raise
        return conn

    def _commit(self, conn: sqlite3.Connection, appends: list[_Append], commits: list[tuple[int, float]]) -> list[Outcome]:
        """One transaction for ``appends`` (group commit); every append fails if it fails.
        A commit's ``(rows, seconds)`` goes to ``commits``."""
        started = time.perf_counter()
        rows = [(calendar, bytes(update)) for job in appends for calendar, update in job.items]
        try:
            spans = [update_spans(update) for _, update in rows]
            conn.execute("BEGIN IMMEDIATE")
            # Fewest statements: each one hands the GIL back and forth with the event loop.
            if len(rows) == 1:
                calendar, update = rows[0]
                last = conn.execute(INSERT_ROW, (calendar, update, zlib.crc32(update))).lastrowid or 0
            else:
                conn.executemany(INSERT_ROW, [(calendar, update, zlib.crc32(update)) for calendar, update in rows])
                last = (conn.execute("SELECT last_insert_rowid()").fetchone() or (0,))[0]
            # (calendar_states and audit are WITHOUT ROWID tables: they leave last_insert_rowid alone)
            _advance_states(conn, [calendar for calendar, _ in rows], spans, self._clocks)
            audit = [record for job in appends for record in job.audit]
            tails = self._append_audit(conn, audit) if audit else {}
            conn.execute("COMMIT")
        except BaseException as exc:  # a failed commit fails every append in it, loudly
            _rollback(conn)
            error = classify_error(exc, str(self.path), "commit")
            error.__cause__ = exc
            return [(job.future, None, error) for job in appends]
        self._audit_tails.update(tails)  # committed: the next rows follow these
        seq = last - len(rows) + 1
        outcomes: list[Outcome] = []
        for job in appends:
            count = len(job.items)
            outcomes.append((job.future, list(range(seq, seq + count)), None))
            seq += count
        commits.append((len(rows), time.perf_counter() - started))
        return outcomes

    def _append_audit(self, conn: sqlite3.Connection, records: list[AuditRecord]) -> dict[str, tuple[int, str]]:
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
                last = conn.execute("SELECT n, hash FROM audit WHERE calendar = ? ORDER BY n DESC LIMIT 1", (name,)).fetchone()
                tail = (int(last[0]), str(last[1])) if last else (0, GENESIS)
            chained = chain(name, tail, list(group.values()))
            rows += chained
            tails[name] = (chained[-1].n, chained[-1].hash)
        conn.executemany(INSERT_AUDIT, [(r.calendar, r.n, r.key, r.entry, r.prev, r.hash, r.via) for r in rows])
        return tails

    # ---- the event loop side -------------------------------------------------------------------

    def _settle(self, outcomes: list[Outcome], commits: list[tuple[int, float]]) -> None:
        """Resolve a batch's futures (on the event loop; one call per batch)."""
        for rows, seconds in commits:
            self.stats.commits += 1
            self.stats.rows += rows
            if len(self.stats.commit_seconds) < 100_000:
                self.stats.commit_seconds.append(seconds)
        self._pending -= len(outcomes)
        for future, result, error in outcomes:
            _resolve(future, error, result)
        if self._pending < MAX_PENDING_JOBS:
            self._room.set()

    async def _submit(self, job: _Append | _Call) -> Any:
        while self._pending >= MAX_PENDING_JOBS:
            self._room.clear()
            await self._room.wait()
            if self._closing:
                raise StorageError(f"store {self.path} is closed")
        self._pending += 1
        self._jobs.put(job)
        return await job.future

    async def _run(self, query: Query) -> Any:
        """Run ``query(connection)`` in the writer thread, after everything queued before it."""
        if self._closing:
            raise StorageError(f"store {self.path} is closed")
        return await self._submit(_Call(query, self._loop.create_future()))

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
        result: list[int] = await self._submit(_Append(items, audit or [], self._loop.create_future()))
        return result

    # ---- reads ---------------------------------------------------------------------------------

    async def audit_log(self, calendar: CalendarId) -> list[AuditRow]:
        """The calendar's audit rows, in chain order (unverified: ``accord store check`` verifies)."""
        try:
            found = await self._run(lambda conn: conn.execute(
                "SELECT n, key, entry, prev, hash, via FROM audit WHERE calendar = ? ORDER BY n", (calendar,)).fetchall())
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"cannot read the audit log of {calendar!r} from {self.path}: {exc}") from exc
        return [AuditRow(calendar, int(n), str(key), str(entry), str(prev), str(digest), str(via))
                for n, key, entry, prev, digest, via in found]

    async def audit_calendars(self) -> list[CalendarId]:
        """Calendars with at least one audit row."""
        found = await self._run(lambda conn: conn.execute("SELECT DISTINCT calendar FROM audit ORDER BY calendar").fetchall())
        return [CalendarId(row[0]) for row in found]

    async def state_vectors(self, calendars: Iterable[CalendarId]) -> dict[CalendarId, bytes]:
        """The stored state vector of each of ``calendars`` that has rows (others are left out)."""
        names = list(calendars)
        result: dict[CalendarId, bytes] = await self._run(lambda conn: _state_vectors(conn, names))
        return result

    async def state_vector_page(self, after: str, limit: int) -> list[tuple[CalendarId, bytes]]:
        """Up to ``limit`` ``(calendar, stored state vector)`` pairs with names after ``after``, by name
        (page through every calendar: pass the last name of one page to get the next)."""
        found = await self._run(lambda conn: conn.execute(
            "SELECT calendar, state_vector FROM calendar_states WHERE calendar > ? ORDER BY calendar LIMIT ?",
            (after, limit)).fetchall())
        return [(CalendarId(name), bytes(sv)) for name, sv in found]

    async def load(self, calendar: CalendarId) -> list[bytes]:
        """Every update of ``calendar``, oldest first, checksums verified (in the writer thread)."""

        def read(conn: sqlite3.Connection) -> list[bytes]:
            rows = conn.execute("SELECT seq, data, crc FROM updates WHERE calendar = ? ORDER BY seq", (calendar,)).fetchall()
            out = []
            for seq, data, crc in rows:
                if not isinstance(data, bytes) or zlib.crc32(data) != crc:
                    raise CorruptRecord(calendar, seq, "checksum mismatch")
                out.append(data)
            return out

        try:
            result: list[bytes] = await self._run(read)
        except sqlite3.DatabaseError as exc:
            raise StoreUnavailable(f"cannot read calendar {calendar!r} from {self.path}: {exc}") from exc
        return result

    async def log_length(self, calendar: CalendarId) -> tuple[int, int]:
        count, top = await self._run(lambda conn: conn.execute(
            "SELECT count(*), coalesce(max(seq), 0) FROM updates WHERE calendar = ?", (calendar,)).fetchone() or (0, 0))
        return int(count), int(top)

    async def compact(self, calendar: CalendarId, upto_seq: int, snapshot: bytes) -> None:
        """Replace rows ``<= upto_seq`` by one snapshot row, in one transaction."""
        try:
            await self._run(lambda conn: _compact(conn, calendar, upto_seq, bytes(snapshot)))
        except (sqlite3.Error, OSError) as exc:
            raise classify_error(exc, str(self.path), f"compacting {calendar!r}") from exc

    async def calendars(self) -> list[CalendarId]:
        found = await self._run(lambda conn: conn.execute("SELECT calendar FROM calendar_states ORDER BY calendar").fetchall())
        return [CalendarId(row[0]) for row in found]

    async def rows(self, calendar: CalendarId) -> list[tuple[int, bytes, int]]:
        """Raw ``(seq, data, crc)`` rows, unverified (for ``accord store check``)."""
        found = await self._run(lambda conn: conn.execute(
            "SELECT seq, data, crc FROM updates WHERE calendar = ? ORDER BY seq", (calendar,)).fetchall())
        return [(int(r[0]), r[1], int(r[2])) for r in found]

    async def integrity_check(self) -> list[str]:
        """SQLite's own page-level check; ``["ok"]`` when healthy."""
        found = await self._run(lambda conn: conn.execute("PRAGMA integrity_check").fetchall())
        return [str(row[0]) for row in found]

    async def get_meta(self, key: str) -> str | None:
        try:
            row = await self._run(lambda conn: conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone())
        except (sqlite3.Error, OSError) as exc:
            raise classify_error(exc, str(self.path), f"reading {key!r}") from exc
        return None if row is None else str(row[0])

    async def set_meta(self, key: str, value: str) -> None:
        try:
            await self._run(lambda conn: conn.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value)))
        except (sqlite3.Error, OSError) as exc:
            raise classify_error(exc, str(self.path), f"saving {key!r}") from exc

    async def close(self) -> None:
        """Commit what is queued, stop the writer thread, close the file."""
        if self._closed is None:
            self._closing = True
            self._closed = self._loop.create_future()
            if not self._opened.done():  # closed while opening (open() was cancelled)
                await asyncio.wait([self._opened])
            if not self._opened.cancelled() and self._opened.exception() is None:
                self._pending += 1
                self._jobs.put(_Call(lambda conn: None, self._closed, stop=True))
            else:  # it never opened: the thread has returned already
                self._closed.set_result(None)
        await asyncio.shield(self._closed)
        self._thread.join(timeout=1.0)  # it has settled its last batch: only closing the file is left


def _resolve(future: asyncio.Future[Any], error: BaseException | None, result: Any = None) -> None:
    """Settle ``future`` unless its caller gave up on it (cancelled)."""
    if future.done():
        return
    if error is None:
        future.set_result(result)
    else:
        future.set_exception(error)


def _call(conn: sqlite3.Connection, job: _Call) -> Outcome:
    try:
        return job.future, job.query(conn), None
    except BaseException as exc:
        _rollback(conn)
        return job.future, None, exc


def _rollback(conn: sqlite3.Connection) -> None:
    """End a failed transaction, never masking the failure: SQLite rolls back by itself on
    busy, disk-full and I/O errors, and a ROLLBACK then raises "no transaction is active"."""
    if conn.in_transaction:
        try:
            conn.execute("ROLLBACK")
        except (sqlite3.Error, ValueError):
            pass


def _state_vectors(conn: sqlite3.Connection, names: list[CalendarId]) -> dict[CalendarId, bytes]:
    if len(names) == 1:  # a commit's usual case: one calendar
        row = conn.execute("SELECT state_vector FROM calendar_states WHERE calendar = ?", names).fetchone()
        return {names[0]: bytes(row[0])} if row is not None else {}
    out: dict[CalendarId, bytes] = {}
    for i in range(0, len(names), SQL_VARIABLES):
        chunk = names[i : i + SQL_VARIABLES]
        found = conn.execute(
            f"SELECT calendar, state_vector FROM calendar_states WHERE calendar IN ({','.join('?' * len(chunk))})", chunk
        ).fetchall()
        out.update((CalendarId(name), bytes(sv)) for name, sv in found)
    return out


def _advance_states(conn: sqlite3.Connection, calendars: list[CalendarId], spans: list[Spans],
                    cache: Clocks | None = None) -> None:
    """Move the stored state vectors past rows just inserted (inside their transaction).
    ``cache``: vectors this connection wrote, decoded; an entry is used only while the stored
    bytes are still the ones it wrote (it is updated when the transaction may still roll back:
    the bytes check makes a stale entry harmless)."""
    names = list(dict.fromkeys(calendars))
    stored = _state_vectors(conn, names)
    clocks: dict[CalendarId, dict[int, int]] = {}
    for name in names:
        raw = stored.get(name)
        known = cache.get(name) if cache is not None and raw is not None else None
        clocks[name] = dict(known[1]) if known is not None and known[0] == raw else (
            decode_state_vector(raw) if raw is not None else {})
    moved = {name for name in clocks if name not in stored}
    for name, row_spans in zip(calendars, spans, strict=True):
        if advance(clocks[name], row_spans):
            moved.add(name)
    if not moved:
        return
    encoded = [(name, encode_state_vector(clocks[name])) for name in moved]
    if len(encoded) == 1:
        conn.execute(UPSERT_STATE, encoded[0])
    else:
        conn.executemany(UPSERT_STATE, encoded)
    if cache is not None:
        if len(cache) > CACHED_CLOCKS:
            cache.clear()
        cache.update((name, (raw, clocks[name])) for name, raw in encoded)


def _compact(conn: sqlite3.Connection, calendar: CalendarId, upto_seq: int, snapshot: bytes) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute("DELETE FROM updates WHERE calendar = ? AND seq <= ?", (calendar, upto_seq))
        conn.execute("INSERT INTO updates (seq, calendar, data, crc) VALUES (?, ?, ?, ?)",
                     (upto_seq, calendar, snapshot, zlib.crc32(snapshot)))
        # The snapshot may hold more than the rows it replaces (the replica ran ahead): the
        # stored vector follows what the log now holds.
        _advance_states(conn, [calendar], [update_spans(snapshot)])
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise


def _migrate_to_state_vectors(conn: sqlite3.Connection, target: Path) -> None:
    """Schema 1 -> 2: compute every calendar's state vector from its log, once, in one transaction.
    Rows that fail their checksum are left out (the vector then claims less, never more)."""
    started = time.perf_counter()
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(STATES_SCHEMA.strip())
        names = [row[0] for row in conn.execute("SELECT DISTINCT calendar FROM updates").fetchall()]
        for name in names:
            found = conn.execute("SELECT data, crc FROM updates WHERE calendar = ? ORDER BY seq", (name,)).fetchall()
            updates = [bytes(data) for data, crc in found if isinstance(data, bytes) and zlib.crc32(data) == crc]
            conn.execute("INSERT OR REPLACE INTO calendar_states (calendar, state_vector) VALUES (?, ?)",
                         (name, log_state_vector(updates)))
        conn.execute("PRAGMA user_version=2")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
    log.info("store migrated: state vectors computed", extra={"store": str(target), "calendars": len(names),
                                                              "ms": round((time.perf_counter() - started) * 1000, 1)})


def _migrate_to_audit(conn: sqlite3.Connection) -> None:
    """Schema 2 -> 3: add the (empty) audit table; nothing else changes."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        for statement in AUDIT_SCHEMA.split(";"):
            if statement.strip():
                conn.execute(statement.strip())
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        conn.execute("COMMIT")
    except BaseException:
        _rollback(conn)
        raise
