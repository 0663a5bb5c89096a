"""PostgreSQL storage on asyncpg: one shared store for a cluster of relay processes.

Same contract as :class:`~engine.storage.sqlite.SqliteStorage` (the conformance suite runs on
both), for several relay processes sharing one database:

- **Sequence numbers per calendar, from a counter row.** ``calendars.head`` is the calendar's
  last seq; an append bumps it (``UPDATE``-ing the row, which locks it until commit) and numbers
  its rows from it. Two processes appending to one calendar therefore commit in seq order, with
  no holes: a reader that has everything up to ``n`` gets the rest with ``seq > n``, exactly. (A
  global ``bigserial`` would not: a row numbered earlier but committed later would be skipped.)
  Several calendars in one commit lock their rows in name order, so commits never deadlock.
- **Group commit, durable acknowledgement.** Appends from any number of tasks queue for one
  writer connection; everything queued while a commit runs goes into the next transaction. The
  writer session runs with ``synchronous_commit=on``: an append returns after PostgreSQL has
  flushed its commit, never before.
- **One NOTIFY per commit** on channel :data:`CHANNEL`, sent by the same transaction (so it is
  delivered only if and after it commits), payload :func:`notice_payload`: the writing process's
  :attr:`PostgresStorage.instance` and ``calendar:seq`` of the last row of each calendar in the
  commit, followed by the commit's rows themselves when they fit (base64, so a listener that
  holds everything before them needs no query), ``*`` instead when even the heads would pass
  PostgreSQL's 8000-byte limit (listeners then check the heads of every calendar they hold).
  Notifying commits serialize cluster-wide, hence one per batch, never one per row. Listening
  is the relay's job (``relay/cluster.py``).
- **Checked rows.** Each row carries a CRC-32 of its bytes; :meth:`load` raises
  :class:`~engine.errors.CorruptRecord` naming the calendar and row on a mismatch.
- **Fenced writes.** ``append_many(..., fences=)`` reads each named lease's epoch in
  ``accord.leases`` ``FOR SHARE`` inside the commit and refuses (seq :data:`~engine.storage.FENCED`)
  the rows whose :class:`~engine.storage.Fence` is stale; the rest of the commit is stored. A relay
  cluster's home fences its decisions with its lease epoch (``relay/lease.py``), so a deposed
  holder's late decisions are never stored; a takeover's epoch bump waits for a commit that read
  the old epoch. Sessions end a transaction left idle for 3 s (``idle_in_transaction_session_timeout``:
  a frozen process must not hold a fence row, or a calendar's counter row, for long).
- **Versioned schema**, in PostgreSQL schema ``accord``: created by the first relay that opens
  the database (under an advisory lock, so relays starting together do not race), migrated
  forward by a newer accord, refused by an older one ("upgrade accord").

Failures are classified once (:func:`classify_pg_error`): a lost connection, a server shutting
down or refusing connections, a deadlock or serialization failure, a full disk, too many
connections raise :class:`~engine.errors.TransientStorageError` (the relay's pipeline retries
and holds writers back); PostgreSQL's data-corrupted errors :class:`~engine.errors.StoreCorrupt`.
A connection lost *during* COMMIT leaves the outcome unknown; the append then reports a transient
error and is retried, which may store its rows twice: harmless for CRDT updates (applying one
twice changes nothing) and never an acknowledgement of rows that were not stored.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import logging
import secrets
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import asyncpg

from ..audit import GENESIS, AuditRecord, AuditRow, chain
from ..errors import (
    CorruptRecord,
    StorageError,
    StoreCorrupt,
    StoreFault,
    StoreUnavailable,
    TransientStorageError,
)
from ..model import CalendarId
from ..protocol import decode_state_vector, encode_state_vector
from . import FENCED, Fence, merge_log, redact  # the package is loaded before this module (it imports it lazily)
from .state_vectors import Spans, advance, update_spans

log = logging.getLogger(__name__)
SCHEMA_VERSION = 2
CHANNEL = "accord_updates"
NOTIFY_LIMIT_BYTES = 7900  # PostgreSQL refuses payloads of 8000 bytes and more
ALL_CALENDARS = "*"
SNAPSHOT_ORIGIN = "snapshot"  # a compaction's row: never any process's instance (hex), so every process applies it
MIGRATION_LOCK = 0x6163636F7264  # "accord": one relay creates or migrates the schema at a time
# Transactions here are a few statements long: one left open (its process frozen, say, while it
# holds a fence row FOR SHARE or a calendar's counter row) must not hold the other processes up long.
SESSION = {"synchronous_commit": "on", "application_name": "accord", "idle_in_transaction_session_timeout": "3000"}
# A server that stops answering fails the call (TimeoutError: transient, the writer's session is
# replaced and the caller may retry) instead of holding the writer, and every append behind it, forever.
LIMITS: dict[str, float] = {"timeout": 15.0, "command_timeout": 60.0}
LEASES = """CREATE TABLE accord.leases (
        name text PRIMARY KEY,              -- e.g. 'home': one per cluster (relay/lease.py)
        epoch bigint NOT NULL DEFAULT 0,    -- fencing token, +1 on every takeover
        holder text NOT NULL DEFAULT '',    -- relay id of the process that took it last
        since timestamptz
    )"""
DECIDED = """CREATE TABLE accord.decided (
        calendar text PRIMARY KEY,
        seq bigint NOT NULL                 -- a cluster's home decided every request in rows <= seq
    )"""
SCHEMA = [
    "CREATE SCHEMA IF NOT EXISTS accord",
    "CREATE TABLE accord.schema_version (version integer NOT NULL)",
    """CREATE TABLE accord.calendars (
        calendar text PRIMARY KEY,
        head bigint NOT NULL DEFAULT 0,     -- last seq; its row lock orders appends to the calendar
        state_vector bytea                  -- see engine/storage/state_vectors.py
    )""",
    """CREATE TABLE accord.updates (
        calendar text NOT NULL REFERENCES accord.calendars,
        seq bigint NOT NULL,
        origin text NOT NULL,               -- PostgresStorage.instance of the writing process
        data bytea NOT NULL,
        crc bigint NOT NULL,
        PRIMARY KEY (calendar, seq)
    )""",
    """CREATE TABLE accord.audit (
        calendar text NOT NULL,
        n bigint NOT NULL,
        key text NOT NULL,
        entry text NOT NULL,
        prev text NOT NULL,
        hash text NOT NULL,
        via text NOT NULL DEFAULT '',
        PRIMARY KEY (calendar, n),
        UNIQUE (calendar, key)
    )""",
    "CREATE TABLE accord.audit_heads (calendar text PRIMARY KEY, n bigint NOT NULL, hash text NOT NULL)",
    "CREATE TABLE accord.meta (key text PRIMARY KEY, value text NOT NULL)",
    LEASES,
    DECIDED,
    f"INSERT INTO accord.schema_version VALUES ({SCHEMA_VERSION})",
]
# Migrations from version N to N + 1, appended as the schema grows: MIGRATIONS[N - 1].
MIGRATIONS: list[list[str]] = [[LEASES, DECIDED]]

BUMP_HEADS = """
INSERT INTO accord.calendars AS c (calendar, head)
SELECT name, n FROM unnest($1::text[], $2::bigint[]) AS t(name, n) ORDER BY name
ON CONFLICT (calendar) DO UPDATE SET head = c.head + excluded.head
RETURNING calendar, head, state_vector
"""
INSERT_ROWS = """
INSERT INTO accord.updates (calendar, seq, origin, data, crc)
SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[], $5::bigint[])
"""
# The common commit (no fences, no audit, every calendar's stored vector known): one statement,
# so one round trip in PostgreSQL's own implicit transaction. Each calendar's counter row is
# locked in name order (as by BUMP_HEADS) and bumped, with the new state vector, only if its
# stored vector is still the one this process computed that vector from ($4); the rows of the
# calendars bumped are numbered from their heads; one NOTIFY names each bumped calendar's head
# with its rows ($10: base64, comma-separated; '' when they do not fit), just the heads past
# NOTIFY_LIMIT_BYTES, ``*`` past it even so. A calendar not bumped (another process moved its vector) is
# left untouched, its rows not stored: they are committed again statement by statement.
COMMIT_ONE = f"""
WITH t AS (SELECT * FROM unnest($1::text[], $2::bigint[], $3::bytea[], $4::bytea[], $10::text[]) AS t(name, n, sv, known, rows)),
bumped AS (
    INSERT INTO accord.calendars AS c (calendar, head, state_vector)
    SELECT name, n, sv FROM t ORDER BY name
    ON CONFLICT (calendar) DO UPDATE SET head = c.head + excluded.head, state_vector = excluded.state_vector
    WHERE c.state_vector = (SELECT known FROM t WHERE t.name = c.calendar)
    RETURNING calendar, head
),
stored AS (
    INSERT INTO accord.updates (calendar, seq, origin, data, crc)
    SELECT r.name, b.head - t.n + r.nth, $5, r.data, r.crc
    FROM unnest($6::text[], $7::bigint[], $8::bytea[], $9::bigint[]) AS r(name, nth, data, crc)
    JOIN bumped b ON b.calendar = r.name JOIN t ON t.name = r.name
),
notified AS (
    SELECT pg_notify('{CHANNEL}', CASE WHEN octet_length(p.full) <= {NOTIFY_LIMIT_BYTES} THEN p.full
                                      WHEN octet_length(p.heads) <= {NOTIFY_LIMIT_BYTES} THEN p.heads
                                      ELSE $5 || E'\\n{ALL_CALENDARS}' END)
    FROM (SELECT $5 || E'\\n' || string_agg(b.calendar || ':' || b.head || CASE WHEN t.rows = '' THEN '' ELSE ' ' || t.rows END,
                                            E'\\n') AS full,
                 $5 || E'\\n' || string_agg(b.calendar || ':' || b.head, E'\\n') AS heads
          FROM bumped b JOIN t ON t.name = b.calendar) AS p
    WHERE p.heads IS NOT NULL  -- nothing bumped: nothing to say
)
SELECT b.calendar, b.head FROM bumped b, notified
"""
CHECK_FENCES = "SELECT name, epoch FROM accord.leases WHERE name = ANY($1::text[]) ORDER BY name FOR SHARE"
SET_STATES = """
UPDATE accord.calendars AS c SET state_vector = t.sv
FROM unnest($1::text[], $2::bytea[]) AS t(name, sv) WHERE c.calendar = t.name
"""


@dataclass(frozen=True, slots=True)
class StoredRow:
    """One row of a calendar's log as another process reads it: ``origin`` is the writer's
    :attr:`PostgresStorage.instance`."""

    seq: int
    origin: str
    data: bytes


@dataclass(frozen=True, slots=True)
class CommitNotice:
    """What a NOTIFY on :data:`CHANNEL` says: who committed, and each calendar's new last seq
    (``heads`` is None when the payload named too many calendars: check them all). ``rows``
    holds, for the calendars whose rows fitted, the commit's rows of it in seq order: the last
    is row ``heads[name]``."""

    origin: str
    heads: dict[CalendarId, int] | None
    rows: dict[CalendarId, list[bytes]] = field(default_factory=dict)


def encoded_rows(rows: list[bytes]) -> str:
    """One calendar's rows as a notice carries them (see :func:`notice_payload`)."""
    return ",".join(base64.b64encode(row).decode() for row in rows)


def rows_budget(origin: str, rows: dict[CalendarId, str]) -> bool:
    """True if a notice can carry these encoded rows (with room for every calendar's head)."""
    return len(origin) + sum(len(name) + len(text) + 22 for name, text in rows.items()) <= NOTIFY_LIMIT_BYTES


def notice_payload(origin: str, heads: dict[CalendarId, int], rows: dict[CalendarId, list[bytes]] | None = None) -> str:
    """The NOTIFY payload for one commit (always under PostgreSQL's 8000-byte limit): a line
    per calendar, ``name:seq`` and, when they fit, a space and the commit's rows of it."""
    encoded = {name: encoded_rows(rows[name]) for name in heads} if rows else {}
    if encoded and rows_budget(origin, encoded):
        payload = "\n".join([origin, *(f"{name}:{seq} {encoded[name]}" for name, seq in heads.items())])
        if len(payload.encode()) <= NOTIFY_LIMIT_BYTES:
            return payload
    payload = "\n".join([origin, *(f"{name}:{seq}" for name, seq in heads.items())])
    if len(payload.encode()) > NOTIFY_LIMIT_BYTES:
        return f"{origin}\n{ALL_CALENDARS}"
    return payload


def parse_notice(payload: str) -> CommitNotice:
    """Read a :func:`notice_payload`. Raises ValueError for anything else."""
    origin, *lines = payload.split("\n")
    if lines == [ALL_CALENDARS]:
        return CommitNotice(origin, None)
    heads: dict[CalendarId, int] = {}
    rows: dict[CalendarId, list[bytes]] = {}
    for line in lines:
        head, _, carried = line.partition(" ")  # calendar names never hold a space
        name, _, seq = head.rpartition(":")  # calendar names may hold ':'; the seq never does
        heads[CalendarId(name)] = int(seq)
        if carried:
            try:
                rows[CalendarId(name)] = [base64.b64decode(part, validate=True) for part in carried.split(",")]
            except binascii.Error as exc:
                raise ValueError(f"unreadable rows in a notice: {exc}") from exc
    return CommitNotice(origin, heads, rows)


TRANSIENT_SQLSTATES = {
    "40001": StoreFault.BUSY,  # serialization_failure
    "40P01": StoreFault.BUSY,  # deadlock_detected
    "55P03": StoreFault.BUSY,  # lock_not_available
    "57014": StoreFault.BUSY,  # query_canceled (statement_timeout)
    "53100": StoreFault.FULL,  # disk_full
    "53200": StoreFault.FULL,  # out_of_memory
    "53300": StoreFault.UNREACHABLE,  # too_many_connections
    "57P01": StoreFault.UNREACHABLE,  # admin_shutdown
    "57P02": StoreFault.UNREACHABLE,  # crash_shutdown
    "57P03": StoreFault.UNREACHABLE,  # cannot_connect_now (starting up, recovering)
    "58030": StoreFault.IO,  # io_error
}
CORRUPT_SQLSTATES = {"XX001", "XX002"}  # data_corrupted, index_corrupted


def classify_pg_error(exc: BaseException, store: str, doing: str) -> StorageError:
    """The :class:`StorageError` for an asyncpg or socket error raised while ``doing`` on ``store``
    (see the module docstring); a :class:`StorageError` passes through. The caller raises it ``from exc``."""
    if isinstance(exc, StorageError):
        return exc
    detail = f"{doing} failed: {exc}"
    if isinstance(exc, asyncpg.PostgresError):
        state = str(getattr(exc, "sqlstate", "") or "")
        if state in CORRUPT_SQLSTATES:
            return StoreCorrupt(f"store {store} is damaged ({detail}); it is not retried or replaced: restore the "
                                "database from a backup (`accord store check` shows what is readable)")
        fault = TRANSIENT_SQLSTATES.get(state) or (StoreFault.UNREACHABLE if state.startswith("08") else None)
        if fault is not None:
            return TransientStorageError(store, fault, detail)
    elif isinstance(exc, (asyncpg.InterfaceError, ConnectionError, OSError, TimeoutError)):
        # The connection is gone (or never came): the server is down, restarting or unreachable.
        return TransientStorageError(store, StoreFault.UNREACHABLE, detail)
    return StorageError(f"store {store}: {detail}")


@dataclass(slots=True)
class _Pending:
    items: list[tuple[CalendarId, bytes]]
    future: asyncio.Future[list[int]]
    audit: list[AuditRecord] = field(default_factory=list)
    fences: list[Fence | None] | None = None  # one per item


@dataclass(slots=True)
class PgStats:
    """Counters for metrics and benchmarks."""

    commits: int = 0
    rows: int = 0
    notifies: int = 0
    fenced: int = 0  # rows refused: their fence was stale
    one_statement: int = 0  # commits in one statement, one round trip (the common case)
    vector_moved: int = 0  # calendars such a commit left to the next (another process had moved their vector)


class PostgresStorage:
    """A store in a PostgreSQL database. Open with ``await PostgresStorage.open(url)``; close with
    ``await store.close()``.

    Attributes:
        url: the database URL (log it with :func:`redact`).
        instance: this process's id in the ``origin`` column and NOTIFY payloads (random per open:
            a restarted process is a new instance).

    Raises:
        StoreUnavailable: the server cannot be reached, the database is not an accord store, or
            its schema is from a newer accord.
    """

    def __init__(self, url: str, writer: asyncpg.Connection, readers: asyncpg.Pool) -> None:
        self.url = url
        self.name = redact(url)
        self.instance = secrets.token_hex(6)
        self._writer_conn: asyncpg.Connection | None = writer
        self._readers = readers
        self._queue: list[_Pending] = []
        # Each calendar's state vector as this process last stored it: what a one-statement
        # commit advances (and checks against the stored one).
        self._vectors: dict[CalendarId, bytes] = {}
        self._wake = asyncio.Event()
        self._closing = False
        self.stats = PgStats()
        # Called after each commit, before its appends return, with each calendar's (first, last) seq
        # in it: a cluster member knows its own rows are in memory and need no fetching.
        self.commit_hooks: list[Callable[[dict[CalendarId, tuple[int, int]]], None]] = []
        self._writer = asyncio.create_task(self._write_loop(), name="postgres-writer")

    @classmethod
    async def open(cls, url: str, *, readers: int = 4) -> PostgresStorage:
        """Connect to ``url``, create or migrate the schema, start the writer.

        ``readers``: connections in the pool for reads (loads, catch-up fetches, metadata)."""
        name = redact(url)
        try:
            writer = await asyncpg.connect(url, server_settings=SESSION, **LIMITS)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise StoreUnavailable(f"cannot connect to store {name}: {exc}; is the PostgreSQL server running and "
                                   "the URL right (postgresql://user[:password]@host[:port]/database)?") from exc
        try:
            await _prepare_schema(writer, name)
            pool = await asyncpg.create_pool(url, min_size=1, max_size=readers, server_settings=SESSION, **LIMITS)
        except BaseException:
            await writer.close()
            raise
        return cls(url, writer, pool)

    # ---- appends (group commit) ----------------------------------------------------------------

    async def append(self, calendar: CalendarId, update: bytes) -> int:
        """Durably append one update; return its sequence number (per calendar)."""
        return (await self.append_many([(calendar, update)]))[0]

    async def append_many(self, items: list[tuple[CalendarId, bytes]], *,
                          audit: list[AuditRecord] | None = None,
                          fences: list[Fence | None] | None = None) -> list[int]:
        """Durably append updates, and ``audit`` entries to the audit log (chained, in the same
        transaction); they commit together with whatever else is queued.

        ``fences``: one per item (None: unfenced). The commit reads each named lease's epoch
        ``FOR SHARE`` (a takeover bumping it waits for this commit, and this commit sees a bump
        committed before it); an item whose fence is stale is not stored and gets seq
        :data:`~engine.storage.FENCED`. See :class:`~engine.storage.Fence`."""
        if self._closing:
            raise StorageError(f"store {self.name} is closed")
        if fences is not None and len(fences) != len(items):
            raise ValueError("append_many: one fence (or None) per item")
        future: asyncio.Future[list[int]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Pending(items, future, audit or [], fences if fences and any(fences) else None))
        self._wake.set()
        return await future

    async def _write_loop(self) -> None:
        while True:
            if not self._closing:
                await self._wake.wait()
            self._wake.clear()
            batch, self._queue = self._queue, []
            if not batch:
                if self._closing:
                    return
                continue
            try:
                seqs = await self._commit(batch)
            except Exception as exc:  # a failed commit fails every append in it, loudly
                self._vectors.clear()  # its outcome may be unknown: read the stored vectors again
                error = classify_pg_error(exc, self.name, "commit")
                if isinstance(error, TransientStorageError):
                    await self._drop_writer()
                for pending in batch:
                    if not pending.future.done():
                        pending.future.set_exception(error)
                continue
            for pending, got in zip(batch, seqs, strict=True):
                if not pending.future.done():
                    pending.future.set_result(got)

    async def _connection(self) -> asyncpg.Connection:
        if self._writer_conn is None or self._writer_conn.is_closed():
            self._writer_conn = await asyncpg.connect(self.url, server_settings=SESSION, **LIMITS)
        return self._writer_conn

    async def _drop_writer(self) -> None:
        conn, self._writer_conn = self._writer_conn, None
        if conn is not None and not conn.is_closed():
            conn.terminate()  # its state is unknown after a failure: a fresh session next time

    async def _commit(self, batch: list[_Pending]) -> list[list[int]]:
        offered = [(calendar, bytes(update)) for pending in batch for calendar, update in pending.items]
        fences = [fence for pending in batch for fence in (pending.fences or [None] * len(pending.items))]
        offered_spans = [update_spans(data) for _, data in offered]
        audit = [record for pending in batch for record in pending.audit]
        conn = await self._connection()
        if offered and not audit and not any(fences) and all(name in self._vectors for name, _ in offered):
            kept = [True] * len(offered)
            seqs, ranges = await self._commit_one(conn, offered, offered_spans)
            left = [i for i, seq in enumerate(seqs) if seq is None]
            if left:  # another process moved these calendars' vectors: commit them the long way
                _, left_seqs, left_ranges = await self._commit_in_transaction(
                    conn, [offered[i] for i in left], [offered_spans[i] for i in left], [None] * len(left), [])
                for i, seq in zip(left, left_seqs, strict=True):
                    seqs[i] = seq
                ranges.update(left_ranges)
            stored = [seq for seq in seqs if seq is not None]
        else:
            kept, stored, ranges = await self._commit_in_transaction(conn, offered, offered_spans, fences, audit)
        self.stats.commits += 1
        self.stats.rows += len(stored)
        self.stats.fenced += len(offered) - len(stored)
        if ranges:
            for hook in self.commit_hooks:
                hook(ranges)
        numbered = iter(stored)
        every = [next(numbered) if keep else FENCED for keep in kept]
        out: list[list[int]] = []
        index = 0
        for pending in batch:
            out.append(every[index : index + len(pending.items)])
            index += len(pending.items)
        return out

    async def _commit_one(self, conn: asyncpg.Connection, rows: list[tuple[CalendarId, bytes]],
                          spans: list[Spans]) -> tuple[list[int | None], dict[CalendarId, tuple[int, int]]]:
        """The common commit in one statement (:data:`COMMIT_ONE`): one round trip. Each
        calendar's new state vector is the one this process stored last, advanced over its rows;
        a calendar whose stored vector another process moved meanwhile is not committed (its
        rows' seqs are None), since a vector advanced from a stale one could lose a row."""
        counts: dict[CalendarId, int] = {}
        nth: list[int] = []
        for name, _ in rows:
            counts[name] = counts.get(name, 0) + 1
            nth.append(counts[name])
        names = sorted(counts)
        known = {name: self._vectors[name] for name in names}
        clocks = {name: decode_state_vector(known[name]) for name in names}
        for (name, _), row_spans in zip(rows, spans, strict=True):
            advance(clocks[name], row_spans)
        new = {name: encode_state_vector(clocks[name]) for name in names}
        carried = {name: encoded_rows([d for n, d in rows if n == name]) for name in names}
        if not rows_budget(self.instance, carried):
            carried = dict.fromkeys(names, "")
        found = await conn.fetch(COMMIT_ONE, names, [counts[n] for n in names], [new[n] for n in names],
                                 [known[n] for n in names], self.instance, [n for n, _ in rows], nth,
                                 [d for _, d in rows], [zlib.crc32(d) for _, d in rows], [carried[n] for n in names])
        ranges: dict[CalendarId, tuple[int, int]] = {}
        for record in found:
            name = CalendarId(record["calendar"])
            ranges[name] = (int(record["head"]) - counts[name] + 1, int(record["head"]))
            self._vectors[name] = new[name]
        for name in names:
            if name not in ranges:
                del self._vectors[name]
                self.stats.vector_moved += 1
        if ranges:
            self.stats.notifies += 1
            self.stats.one_statement += 1
        return [ranges[name][0] + i - 1 if name in ranges else None for (name, _), i in zip(rows, nth, strict=True)], ranges

    async def _commit_in_transaction(
        self, conn: asyncpg.Connection, offered: list[tuple[CalendarId, bytes]], offered_spans: list[Spans],
        fences: list[Fence | None], audit: list[AuditRecord],
    ) -> tuple[list[bool], list[int], dict[CalendarId, tuple[int, int]]]:
        """A commit with fences or audit entries, or of a calendar whose stored vector this
        process does not know (or knows stale): statement by statement, in one transaction."""
        vectors: dict[CalendarId, bytes] = {}
        async with conn.transaction():
            stale = await _stale_fences(conn, fences)
            kept = [fence not in stale for fence in fences]
            rows = [row for row, keep in zip(offered, kept, strict=True) if keep]
            spans = [row_spans for row_spans, keep in zip(offered_spans, kept, strict=True) if keep]
            counts: dict[CalendarId, int] = {}
            for name, _ in rows:
                counts[name] = counts.get(name, 0) + 1
            firsts: dict[CalendarId, int] = {}
            states: dict[CalendarId, bytes | None] = {}
            if counts:
                names = sorted(counts)
                for record in await conn.fetch(BUMP_HEADS, names, [counts[n] for n in names]):
                    name = CalendarId(record["calendar"])
                    firsts[name] = int(record["head"]) - counts[name] + 1
                    states[name] = record["state_vector"]
            next_seq = dict(firsts)
            seqs: list[int] = []
            for name, _ in rows:
                seqs.append(next_seq[name])
                next_seq[name] += 1
            if rows:
                await conn.execute(INSERT_ROWS, [n for n, _ in rows], seqs, [self.instance] * len(rows),
                                   [d for _, d in rows], [zlib.crc32(d) for _, d in rows])
                vectors = await _advance_states(conn, states, rows, spans)
            if audit:
                await _append_audit(conn, audit)
            if rows:
                heads = {name: next_seq[name] - 1 for name in counts}
                by_calendar: dict[CalendarId, list[bytes]] = {}
                for name, data in rows:
                    by_calendar.setdefault(name, []).append(data)
                await conn.execute("SELECT pg_notify($1, $2)", CHANNEL, notice_payload(self.instance, heads, by_calendar))
                self.stats.notifies += 1
        self._vectors.update(vectors)  # committed: what the next commit of these calendars starts from
        return kept, seqs, {name: (firsts[name], next_seq[name] - 1) for name in counts}

    # ---- reads ---------------------------------------------------------------------------------

    async def _fetch(self, doing: str, query: str, *args: Any) -> list[asyncpg.Record]:
        try:
            async with self._readers.acquire() as conn:
                return list(await conn.fetch(query, *args))
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise classify_pg_error(exc, self.name, doing) from exc

    async def load(self, calendar: CalendarId) -> list[bytes]:
        """Every update of ``calendar``, oldest first, checksums verified."""
        found = await self._fetch(f"reading calendar {calendar!r}",
                                  "SELECT seq, data, crc FROM accord.updates WHERE calendar = $1 ORDER BY seq", calendar)
        return [_checked(calendar, r["seq"], r["data"], r["crc"]) for r in found]

    async def rows_after(self, calendar: CalendarId, seq: int, limit: int = 10_000) -> list[StoredRow]:
        """Up to ``limit`` rows of ``calendar`` with seq above ``seq``, in seq order, checksums
        verified (a process catching up with what others committed)."""
        found = await self._fetch(
            f"reading calendar {calendar!r}",
            "SELECT seq, origin, data, crc FROM accord.updates WHERE calendar = $1 AND seq > $2 ORDER BY seq LIMIT $3",
            calendar, seq, limit)
        return [StoredRow(int(r["seq"]), str(r["origin"]), _checked(calendar, r["seq"], r["data"], r["crc"]))
                for r in found]

    async def heads(self, calendars: Iterable[CalendarId]) -> dict[CalendarId, int]:
        """The last seq of each of ``calendars`` that has rows."""
        found = await self._fetch("reading heads", "SELECT calendar, head FROM accord.calendars WHERE calendar = ANY($1)",
                                  list(calendars))
        return {CalendarId(r["calendar"]): int(r["head"]) for r in found}

    async def log_length(self, calendar: CalendarId) -> tuple[int, int]:
        found = await self._fetch(f"reading calendar {calendar!r}",
                                  "SELECT count(*) AS rows, coalesce(max(seq), 0) AS top FROM accord.updates "
                                  "WHERE calendar = $1", calendar)
        return int(found[0]["rows"]), int(found[0]["top"])

    async def rows(self, calendar: CalendarId) -> list[tuple[int, bytes, int]]:
        """Raw ``(seq, data, crc)`` rows, unverified (for ``accord store check``)."""
        found = await self._fetch(f"reading calendar {calendar!r}",
                                  "SELECT seq, data, crc FROM accord.updates WHERE calendar = $1 ORDER BY seq", calendar)
        return [(int(r["seq"]), bytes(r["data"]), int(r["crc"])) for r in found]

    async def integrity_check(self) -> list[str]:
        """What the database can check without an extension: every calendar's counter row is at
        least its highest seq (``["ok"]`` when healthy)."""
        found = await self._fetch("checking", "SELECT c.calendar, c.head, max(u.seq) AS top FROM accord.calendars c "
                                  "JOIN accord.updates u USING (calendar) GROUP BY c.calendar, c.head "
                                  "HAVING max(u.seq) > c.head")
        return [f"calendar {r['calendar']!r}: head {r['head']} is behind row {r['top']}" for r in found] or ["ok"]

    async def compact(self, calendar: CalendarId, upto_seq: int, snapshot: bytes) -> None:
        """Replace rows ``<= upto_seq`` by one snapshot row, in one transaction.

        The rows replaced are merged into ``snapshot`` first: in a cluster, the process that
        compacts may not have applied every row another process committed below ``upto_seq``,
        and a snapshot missing one must not delete it. Rows this store appended itself are not
        read: ``snapshot`` holds them (the relay compacts its replica, which applied each before
        storing it). The snapshot row's origin is :data:`SNAPSHOT_ORIGIN`, not this process's:
        it may hold rows this process has not applied, so a catch-up must not skip it."""
        try:
            async with self._readers.acquire() as conn, conn.transaction():
                # The rows replaced are committed and appends only add seqs above them, so the
                # calendar's counter row (which every append to it locks) is locked last, for the
                # state vector only: appends wait two statements and a commit, not the whole job.
                # Two compactions of one calendar at once (two processes): the second's DELETE
                # waits for the first's rows; if both chose one seq, the first's snapshot stays (it
                # holds every row up to it, as the second's would).
                found = await conn.fetch("SELECT seq, data, crc FROM accord.updates WHERE calendar = $1 AND seq <= $2 "
                                         "AND origin <> $3 ORDER BY seq", calendar, upto_seq, self.instance)
                replaced = [_checked(calendar, r["seq"], r["data"], r["crc"]) for r in found]
                merged = await _merged(snapshot, replaced)
                await conn.execute("DELETE FROM accord.updates WHERE calendar = $1 AND seq <= $2", calendar, upto_seq)
                await conn.execute("INSERT INTO accord.updates (calendar, seq, origin, data, crc) VALUES ($1, $2, $3, $4, $5) "
                                   "ON CONFLICT (calendar, seq) DO NOTHING",
                                   calendar, upto_seq, SNAPSHOT_ORIGIN, merged, zlib.crc32(merged))
                state = await conn.fetchval(
                    "INSERT INTO accord.calendars (calendar, head) VALUES ($1, $2) ON CONFLICT (calendar) "
                    "DO UPDATE SET head = greatest(accord.calendars.head, $2) RETURNING state_vector", calendar, upto_seq)
                clocks = decode_state_vector(state) if state else {}
                advance(clocks, update_spans(merged))
                vector = encode_state_vector(clocks)
                await conn.execute("UPDATE accord.calendars SET state_vector = $2 WHERE calendar = $1", calendar, vector)
        except (asyncpg.PostgresError, asyncpg.InterfaceError, OSError, TimeoutError) as exc:
            raise classify_pg_error(exc, self.name, f"compacting {calendar!r}") from exc
        self._vectors[calendar] = vector  # a hint only: a commit checks it against the stored one

    async def calendars(self) -> list[CalendarId]:
        found = await self._fetch("listing calendars", "SELECT calendar FROM accord.calendars WHERE head > 0 "
                                  "ORDER BY calendar COLLATE \"C\"")
        return [CalendarId(r["calendar"]) for r in found]

    async def state_vectors(self, calendars: Iterable[CalendarId]) -> dict[CalendarId, bytes]:
        found = await self._fetch("reading state vectors", "SELECT calendar, state_vector FROM accord.calendars "
                                  "WHERE calendar = ANY($1) AND state_vector IS NOT NULL", list(calendars))
        return {CalendarId(r["calendar"]): bytes(r["state_vector"]) for r in found}

    async def state_vector_page(self, after: str, limit: int) -> list[tuple[CalendarId, bytes]]:
        # COLLATE "C": names sort by code point, as in SQLite and as the hub's prefix scans expect.
        found = await self._fetch("reading state vectors",
                                  'SELECT calendar, state_vector FROM accord.calendars WHERE calendar COLLATE "C" > $1 '
                                  'AND state_vector IS NOT NULL ORDER BY calendar COLLATE "C" LIMIT $2', after, limit)
        return [(CalendarId(r["calendar"]), bytes(r["state_vector"])) for r in found]

    async def audit_log(self, calendar: CalendarId) -> list[AuditRow]:
        found = await self._fetch(f"reading the audit log of {calendar!r}",
                                  "SELECT n, key, entry, prev, hash, via FROM accord.audit WHERE calendar = $1 ORDER BY n",
                                  calendar)
        return [AuditRow(calendar, int(r["n"]), r["key"], r["entry"], r["prev"], r["hash"], r["via"]) for r in found]

    async def audit_calendars(self) -> list[CalendarId]:
        found = await self._fetch("listing audit logs", 'SELECT calendar FROM accord.audit_heads WHERE n > 0 '
                                  'ORDER BY calendar COLLATE "C"')
        return [CalendarId(r["calendar"]) for r in found]

    async def get_meta(self, key: str) -> str | None:
        found = await self._fetch(f"reading {key!r}", "SELECT value FROM accord.meta WHERE key = $1", key)
        return str(found[0]["value"]) if found else None

    async def set_meta(self, key: str, value: str) -> None:
        await self._fetch(f"saving {key!r}", "INSERT INTO accord.meta (key, value) VALUES ($1, $2) "
                          "ON CONFLICT (key) DO UPDATE SET value = excluded.value", key, value)

    async def mark_decided(self, marks: dict[CalendarId, int], fence: Fence) -> bool:
        """Record that the home decided every request of each calendar in its rows up to the
        given seq, if ``fence`` is still current (False: it is not, nothing was recorded). A new
        home loads only the calendars with rows past their mark (:meth:`undecided`)."""
        names = sorted(marks)
        found = await self._fetch(
            "recording decisions",
            "WITH ok AS (SELECT 1 FROM accord.leases WHERE name = $3 AND epoch = $4 FOR SHARE), "
            "put AS (INSERT INTO accord.decided AS d (calendar, seq) SELECT t.name, t.seq "
            "FROM unnest($1::text[], $2::bigint[]) AS t(name, seq), ok "
            "ON CONFLICT (calendar) DO UPDATE SET seq = greatest(d.seq, excluded.seq) RETURNING 1) "
            "SELECT (SELECT count(*) FROM ok) AS fenced_ok", names, [marks[n] for n in names], fence.name, fence.epoch)
        return bool(found[0]["fenced_ok"])

    async def undecided(self) -> list[CalendarId]:
        """Calendars with rows past their :meth:`mark_decided` mark (or without one), by name."""
        found = await self._fetch("listing undecided calendars",
                                  "SELECT c.calendar FROM accord.calendars c LEFT JOIN accord.decided d USING (calendar) "
                                  'WHERE c.head > 0 AND (d.seq IS NULL OR c.head > d.seq) ORDER BY c.calendar COLLATE "C"')
        return [CalendarId(r["calendar"]) for r in found]

    async def claim_meta(self, key: str, value: str) -> str:
        """Store ``value`` under ``key`` unless a value is there already; return the stored one
        (processes starting together agree on the first writer's value)."""
        await self._fetch(f"saving {key!r}", "INSERT INTO accord.meta (key, value) VALUES ($1, $2) "
                          "ON CONFLICT (key) DO NOTHING", key, value)
        stored = await self.get_meta(key)
        assert stored is not None  # meta rows are never deleted
        return stored

    async def close(self) -> None:
        """Commit what is queued, stop the writer, close the connections."""
        if self._closing:
            return
        self._closing = True
        self._wake.set()
        await self._writer
        if self._writer_conn is not None:
            await self._writer_conn.close()
        await self._readers.close()


def _checked(calendar: CalendarId, seq: int, data: bytes, crc: int) -> bytes:
    if not isinstance(data, bytes) or zlib.crc32(data) != crc:
        raise CorruptRecord(calendar, int(seq), "checksum mismatch")
    return data


async def _merged(snapshot: bytes, replaced: list[bytes]) -> bytes:
    """``snapshot`` with every replaced row merged in (rows that are not Yjs updates are left to
    the snapshot, as SQLite's compaction does)."""
    if not replaced:
        return bytes(snapshot)

    def merge() -> bytes:
        try:
            return merge_log([bytes(snapshot), *replaced])
        except ValueError:
            return bytes(snapshot)

    return await asyncio.to_thread(merge) if len(replaced) > 100 else merge()


async def _advance_states(conn: asyncpg.Connection, stored: dict[CalendarId, bytes | None],
                          rows: list[tuple[CalendarId, bytes]], spans: list[Spans]) -> dict[CalendarId, bytes]:
    """Advance each calendar's stored vector (``stored``, read in this transaction) over ``rows``
    and write the ones that moved; return every calendar's vector as stored now."""
    clocks = {name: decode_state_vector(sv) if sv else {} for name, sv in stored.items()}
    moved = {name for name, sv in stored.items() if sv is None}
    for (name, _), row_spans in zip(rows, spans, strict=True):
        if advance(clocks[name], row_spans):
            moved.add(name)
    vectors = {name: encode_state_vector(clocks[name]) if name in moved else bytes(sv or b"") for name, sv in stored.items()}
    if moved:
        names = sorted(moved)
        await conn.execute(SET_STATES, names, [vectors[n] for n in names])
    return vectors


async def _stale_fences(conn: asyncpg.Connection, fences: list[Fence | None]) -> set[Fence]:
    """The fences among ``fences`` whose lease is no longer at their epoch (read ``FOR SHARE``:
    held until this transaction ends, so a takeover's bump is ordered before or after it)."""
    named = {fence for fence in fences if fence is not None}
    if not named:
        return set()
    epochs = {r["name"]: int(r["epoch"]) for r in await conn.fetch(CHECK_FENCES, sorted({f.name for f in named}))}
    return {fence for fence in named if epochs.get(fence.name) != fence.epoch}


async def _append_audit(conn: asyncpg.Connection, records: list[AuditRecord]) -> None:
    """Chain and insert audit rows inside the commit. Each calendar's tail is its ``audit_heads``
    row, locked (``FOR UPDATE``) until commit, so processes appending to one calendar's log take
    turns; entries the log already holds (another process stored them) are skipped."""
    by_calendar: dict[str, dict[str, AuditRecord]] = {}
    for record in records:
        by_calendar.setdefault(record.calendar, {}).setdefault(record.key, record)
    names = sorted(by_calendar)
    await conn.execute("INSERT INTO accord.audit_heads (calendar, n, hash) SELECT name, 0, $2 FROM unnest($1::text[]) "
                       "AS t(name) ORDER BY name ON CONFLICT DO NOTHING", names, GENESIS)
    tails = {r["calendar"]: (int(r["n"]), str(r["hash"])) for r in await conn.fetch(
        "SELECT calendar, n, hash FROM accord.audit_heads WHERE calendar = ANY($1) ORDER BY calendar FOR UPDATE", names)}
    held = {(r["calendar"], r["key"]) for r in await conn.fetch(
        "SELECT calendar, key FROM accord.audit WHERE (calendar, key) IN (SELECT * FROM unnest($1::text[], $2::text[]))",
        [r.calendar for r in records], [r.key for r in records])}
    rows: list[AuditRow] = []
    for name in names:
        fresh = [record for key, record in by_calendar[name].items() if (name, key) not in held]
        if fresh:
            rows += chain(name, tails[name], fresh)
    if not rows:
        return
    await conn.executemany(
        "INSERT INTO accord.audit (calendar, n, key, entry, prev, hash, via) VALUES ($1, $2, $3, $4, $5, $6, $7)",
        [(r.calendar, r.n, r.key, r.entry, r.prev, r.hash, r.via) for r in rows])
    last: dict[str, AuditRow] = {row.calendar: row for row in rows}
    await conn.executemany("UPDATE accord.audit_heads SET n = $2, hash = $3 WHERE calendar = $1",
                           [(name, row.n, row.hash) for name, row in last.items()])


async def _prepare_schema(conn: asyncpg.Connection, name: str) -> None:
    """Create the schema in an empty database, migrate an older one, refuse a newer or foreign one."""
    try:
        async with conn.transaction():
            await conn.execute("SELECT pg_advisory_xact_lock($1)", MIGRATION_LOCK)
            has_schema = await conn.fetchval("SELECT count(*) FROM pg_namespace WHERE nspname = 'accord'")
            has_version = await conn.fetchval("SELECT to_regclass('accord.schema_version') IS NOT NULL")
            if has_schema and not has_version:
                raise StoreUnavailable(f"{name} has a schema named 'accord' that is not an accord store "
                                       "(no accord.schema_version table); pass another database")
            if not has_schema:
                for statement in SCHEMA:
                    await conn.execute(statement)
                log.info("store created", extra={"store": name, "schema_version": SCHEMA_VERSION})
                return
            version = int(await conn.fetchval("SELECT max(version) FROM accord.schema_version") or 0)
            if version > SCHEMA_VERSION:
                raise StoreUnavailable(f"store {name} has schema version {version}; this accord knows up to "
                                       f"{SCHEMA_VERSION}: upgrade accord")
            while version < SCHEMA_VERSION:
                for statement in MIGRATIONS[version - 1]:
                    await conn.execute(statement)
                version += 1
                await conn.execute("UPDATE accord.schema_version SET version = $1", version)
                log.info("store migrated", extra={"store": name, "schema_version": version})
    except asyncpg.PostgresError as exc:
        raise StoreUnavailable(f"cannot use store {name}: {exc}") from exc
