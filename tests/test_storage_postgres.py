"""The PostgreSQL store: what only it promises (its conformance cases run in test_storage.py):
several processes appending to one calendar, durable acknowledgements across SIGKILL, one NOTIFY
per commit, a versioned schema, classified failures, and audit chains shared by processes."""

from __future__ import annotations

import asyncio
import os
import selectors
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter

import asyncpg
import pytest
from test_storage import edits, write_alternately

from accord.engine.audit import AuditRecord, verify_chain
from accord.engine.errors import CorruptRecord, StoreFault, StoreUnavailable, TransientStorageError
from accord.engine.model import CalendarId
from accord.engine.protocol import decode_state_vector
from accord.engine.replica import Replica
from accord.engine.storage import FENCED, Fence, merge_log, open_storage
from accord.engine.storage.postgres import (
    CHANNEL,
    SNAPSHOT_ORIGIN,
    PostgresStorage,
    classify_pg_error,
    notice_payload,
    parse_notice,
)

CAL = CalendarId("clinic-1")
OTHER = CalendarId("clinic-2")


async def test_each_test_gets_its_own_empty_database(postgres_url: str, postgres_server: object) -> None:
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("CREATE TABLE mine (x int)")
        tables = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
        assert [row["tablename"] for row in tables] == ["mine"]
    finally:
        await conn.close()
    other = await asyncpg.connect(postgres_server.database())  # type: ignore[attr-defined]
    try:
        assert await other.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'") == []
    finally:
        await other.close()


WRITER = textwrap.dedent(
    """
    import asyncio, sys
    from accord.engine.storage.postgres import PostgresStorage

    async def writer(store, tag, worker, count):
        for i in range(count):
            data = b"%s-%d-%d" % (tag.encode(), worker, i)
            seq = await store.append("clinic-1", data)
            print(seq, data.decode(), flush=True)

    async def main():
        store = await PostgresStorage.open(sys.argv[1])
        print("ready", flush=True)
        await asyncio.gather(*(writer(store, sys.argv[2], w, int(sys.argv[3])) for w in range(4)))
        await store.close()

    asyncio.run(main())
    """
)


def start_writer(url: str, tag: str, count: int) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", WRITER, url, tag, str(count)], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)


def read_acks(proc: subprocess.Popen[bytes], until: int, deadline: float) -> dict[int, bytes]:
    """``seq -> data`` the child printed as acknowledged, until it printed ``until`` of them or exited."""
    assert proc.stdout is not None
    acked: dict[int, bytes] = {}
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        while len(acked) < until:
            remaining = deadline - time.monotonic()
            assert remaining > 0, "writer process produced no output in time"
            if not selector.select(remaining):
                continue
            line = proc.stdout.readline().decode()
            if not line:
                break
            if line.strip() == "ready":
                continue
            seq, data = line.split()
            assert int(seq) not in acked, f"seq {seq} acknowledged twice"
            acked[int(seq)] = data.encode()
    return acked


@pytest.mark.slow
async def test_two_processes_appending_to_one_calendar_get_gapless_unique_seqs_in_commit_order(postgres_url: str) -> None:
    await (await PostgresStorage.open(postgres_url)).close()  # the schema exists before both start
    procs = [start_writer(postgres_url, tag, 150) for tag in ("a", "b")]
    try:
        deadline = time.monotonic() + 60
        acked = [read_acks(proc, 600, deadline) for proc in procs]
        for proc in procs:
            assert proc.wait(timeout=30) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=10)
    assert len(acked[0]) == len(acked[1]) == 600
    assert not set(acked[0]) & set(acked[1]), "both processes got the same seq"
    both = acked[0] | acked[1]
    assert sorted(both) == list(range(1, 1201)), "seqs have holes"
    store = await PostgresStorage.open(postgres_url)
    try:
        rows = await store.rows(CAL)
        assert [(seq, data) for seq, data, _ in rows] == sorted(both.items())
        # Whatever a reader had applied up to, seq > applied gives exactly the rest.
        assert [r.seq for r in await store.rows_after(CAL, 700)] == list(range(701, 1201))
    finally:
        await store.close()


@pytest.mark.slow
async def test_every_acknowledged_append_survives_sigkill_of_the_writer(postgres_url: str) -> None:
    await (await PostgresStorage.open(postgres_url)).close()
    proc = start_writer(postgres_url, "k", 100_000)
    try:
        acked = read_acks(proc, 300, time.monotonic() + 60)
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: more appends are in flight
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
    assert proc.returncode == -signal.SIGKILL and len(acked) == 300
    store = await PostgresStorage.open(postgres_url)
    try:
        rows = {seq: data for seq, data, _ in await store.rows(CAL)}
        assert {seq: rows.get(seq) for seq in acked} == acked
        await store.load(CAL)  # every row, acknowledged or not, passes its checksum
    finally:
        await store.close()


async def test_two_stores_on_one_database_interleave_without_holes(postgres_url: str) -> None:
    a, b = await PostgresStorage.open(postgres_url), await PostgresStorage.open(postgres_url)
    try:
        got = await asyncio.gather(*(store.append_many([(CAL, b"%d" % i), (OTHER, b"o")])
                                     for i in range(50) for store in (a, b)))
        cal_seqs = sorted(seqs[0] for seqs in got)
        assert cal_seqs == list(range(1, 101)) and sorted(seqs[1] for seqs in got) == list(range(1, 101))
        assert await a.log_length(CAL) == (100, 100) == await b.log_length(OTHER)
        assert a.stats.commits + b.stats.commits < 100  # group commit: concurrent appends share transactions
    finally:
        await a.close()
        await b.close()


async def test_state_vectors_stay_exact_when_another_process_writes_between_one_statement_commits(
        postgres_url: str) -> None:
    """A commit is one statement once the store knows a calendar's stored vector; rows (and a
    compaction) another process committed in between move that vector, and a commit must then
    read it again rather than write one advanced from a stale copy."""
    replica, updates = edits(8)
    first, second = await PostgresStorage.open(postgres_url), await PostgresStorage.open(postgres_url)
    listener = await asyncpg.connect(postgres_url)
    heard: list[str] = []
    await listener.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: heard.append(payload))
    try:
        await write_alternately(first, second, updates)
        expected = decode_state_vector(replica.state_vector())
        assert decode_state_vector((await first.state_vectors([CAL]))[CAL]) == expected
        await listener.fetchval("SELECT 1")  # delivers every notice committed before it
        # One notice per commit, naming the calendar: none from the one-statement attempts that stored nothing.
        assert len(heard) == first.stats.notifies + second.stats.notifies == len(updates)
        assert all(parse_notice(payload).heads == {CAL: seq} for seq, payload in enumerate(heard, 1))
        assert first.stats.one_statement >= 5  # its runs of appends: one statement each
        assert first.stats.vector_moved > 0 and second.stats.vector_moved > 0
    finally:
        await listener.close()
        await first.close()
        await second.close()


async def test_each_commit_notifies_once_with_each_calendars_last_seq_and_its_rows_if_they_fit(postgres_url: str) -> None:
    store = await PostgresStorage.open(postgres_url)
    listener = await asyncpg.connect(postgres_url)
    heard: asyncio.Queue[str] = asyncio.Queue()
    await listener.add_listener(CHANNEL, lambda _c, _pid, _ch, payload: heard.put_nowait(payload))
    try:
        await store.append(CAL, b"x")
        await store.append_many([(CAL, b"y"), (OTHER, b"z"), (CAL, b"w")])
        await store.append_many([(CAL, b"v"), (OTHER, b"u"), (CAL, b"t")])  # both known now: one statement
        await store.append(CAL, bytes(7000))  # too large to carry: the heads only
        async with asyncio.timeout(5):
            notices = [parse_notice(await heard.get()) for _ in range(4)]
        assert {notice.origin for notice in notices} == {store.instance}
        assert [notice.heads for notice in notices] == [{CAL: 1}, {CAL: 3, OTHER: 1}, {CAL: 5, OTHER: 2}, {CAL: 6}]
        assert [notice.rows for notice in notices] == [{CAL: [b"x"]}, {CAL: [b"y", b"w"], OTHER: [b"z"]},
                                                       {CAL: [b"v", b"t"], OTHER: [b"u"]}, {}]
        assert heard.empty() and store.stats.notifies == 4 and store.stats.one_statement == 2
    finally:
        await listener.close()
        await store.close()


def test_a_notice_carries_the_rows_that_fit_and_says_check_them_all_when_even_the_names_do_not() -> None:
    heads = {CalendarId(f"clinic-{i:05d}"): i for i in range(1000)}
    payload = notice_payload("me", heads)
    assert len(payload.encode()) < 8000 and parse_notice(payload).heads is None
    assert parse_notice(notice_payload("me", {CalendarId("a:b"): 7})).heads == {"a:b": 7}
    assert parse_notice(notice_payload("me", {CAL: 2}, {CAL: [b"x", b"\xff\x00"]})).rows == {CAL: [b"x", b"\xff\x00"]}
    too_large = parse_notice(notice_payload("me", {CAL: 1, OTHER: 1}, {CAL: [bytes(3000)], OTHER: [bytes(3000)]}))
    assert (too_large.heads, too_large.rows) == ({CAL: 1, OTHER: 1}, {})
    with pytest.raises(ValueError):
        parse_notice("me\nclinic-1:1 not*base64")


async def test_audit_rows_from_two_stores_form_one_chain_and_repeats_are_skipped(postgres_url: str) -> None:
    a, b = await PostgresStorage.open(postgres_url), await PostgresStorage.open(postgres_url)
    try:
        await asyncio.gather(*(store.append_many([(CAL, b"\x00\x00")], audit=[AuditRecord(CAL, f"audit/{tag}/{i}", "{}")])
                               for i in range(20) for tag, store in (("a", a), ("b", b))))
        # Another process stored this entry already (it came with an update both applied): skipped.
        await b.append_many([(CAL, b"\x00\x00")], audit=[AuditRecord(CAL, "audit/a/3", "{}")])
        rows = await a.audit_log(CAL)
        assert [r.n for r in rows] == list(range(1, 41)) and verify_chain(CAL, rows) == []
        assert Counter(r.key for r in rows).most_common(1)[0][1] == 1
        assert await b.audit_calendars() == [CAL]
    finally:
        await a.close()
        await b.close()


async def test_compaction_by_a_lagging_process_keeps_rows_its_snapshot_lacks(postgres_url: str) -> None:
    a, b = await PostgresStorage.open(postgres_url), await PostgresStorage.open(postgres_url)
    desk, lagging = Replica(CAL, actor="desk", client_id=1), Replica(CAL, actor="desk", client_id=2)
    try:
        from datetime import UTC, datetime, timedelta
        start = datetime(2026, 12, 1, 8, tzinfo=UTC)
        for i, replica in enumerate((desk, lagging, desk)):
            replica.calendar.book(resource="room-1", start=start + timedelta(hours=i), end=start + timedelta(hours=i, minutes=30),
                                  patient=f"P-{i}", now=start)
        desk_updates = [c.update for c in desk.take_changes()]
        for update in desk_updates:
            await a.append(CAL, update)
        (lag_update,) = [c.update for c in lagging.take_changes()]
        top = await b.append(CAL, lag_update)
        await b.compact(CAL, top, lag_update)  # b never applied a's rows: its snapshot lacks them
        reader = Replica(CAL, actor="reader")
        reader.load(await a.load(CAL))
        assert len(reader.calendar.reservations) == 3
        assert await a.log_length(CAL) == (1, top)
        # The stored snapshot holds a's rows, which b lacks: b's catch-up must not take it for its own row.
        assert [row.origin for row in await b.rows_after(CAL, 0)] == [SNAPSHOT_ORIGIN]
    finally:
        await a.close()
        await b.close()


async def test_two_processes_compacting_one_calendar_at_once_lose_nothing(postgres_url: str) -> None:
    """Both choose the same seq (each compacts what it saw); appends go on meanwhile."""
    a, b = await PostgresStorage.open(postgres_url), await PostgresStorage.open(postgres_url)
    desks = [Replica(CAL, actor="desk", client_id=1), Replica(CAL, actor="desk", client_id=2)]
    try:
        from datetime import UTC, datetime, timedelta
        start = datetime(2026, 12, 1, 8, tzinfo=UTC)

        def book(i: int) -> bytes:
            replica = desks[i % 2]
            replica.calendar.book(resource=f"room-{i}", start=start, end=start + timedelta(minutes=30),
                                  patient=f"P-{i}", now=start)
            (change,) = replica.take_changes()
            return change.update

        updates = [book(i) for i in range(40)]
        for i, update in enumerate(updates[:30]):
            await (a if i % 2 == 0 else b).append(CAL, update)
        top = (await a.log_length(CAL))[1]
        snapshot = merge_log(updates[:30])
        later = [(a if i % 2 else b).append(CAL, update) for i, update in enumerate(updates[30:])]
        await asyncio.gather(a.compact(CAL, top, snapshot), b.compact(CAL, top, snapshot), *later)
        reader = Replica(CAL, actor="reader")
        reader.load(await b.load(CAL))
        assert len(reader.calendar.reservations) == 40
        assert (await a.log_length(CAL))[0] == 11  # one snapshot row and the ten appended meanwhile
        assert await a.state_vectors([CAL]) == {CAL: reader.state_vector()}
    finally:
        await a.close()
        await b.close()


async def test_a_corrupt_row_is_reported_with_its_calendar_and_row(postgres_url: str) -> None:
    store = await PostgresStorage.open(postgres_url)
    try:
        await store.append_many([(CAL, b"one"), (CAL, b"two"), (OTHER, b"fine")])
        conn = await asyncpg.connect(postgres_url)
        await conn.execute("UPDATE accord.updates SET data = 'tw0'::bytea WHERE calendar = $1 AND seq = 2", CAL)
        await conn.close()
        with pytest.raises(CorruptRecord, match=r"calendar 'clinic-1': stored update row 2 is corrupt"):
            await store.load(CAL)
        assert await store.load(OTHER) == [b"fine"]
        assert await store.log_length(CAL) == (2, 2)  # nothing deleted
    finally:
        await store.close()


async def test_a_newer_schema_or_a_foreign_accord_schema_is_refused_and_left_alone(postgres_url: str,
                                                                                   postgres_server: object) -> None:
    await (await PostgresStorage.open(postgres_url)).close()
    conn = await asyncpg.connect(postgres_url)
    await conn.execute("UPDATE accord.schema_version SET version = 99")
    await conn.close()
    with pytest.raises(StoreUnavailable, match=r"schema version 99.*upgrade accord"):
        await PostgresStorage.open(postgres_url)
    foreign = postgres_server.database()  # type: ignore[attr-defined]
    conn = await asyncpg.connect(foreign)
    await conn.execute("CREATE SCHEMA accord; CREATE TABLE accord.customers (id int)")
    await conn.close()
    with pytest.raises(StoreUnavailable, match="not an accord store"):
        await open_storage(foreign)
    conn = await asyncpg.connect(foreign)
    assert await conn.fetchval("SELECT count(*) FROM pg_tables WHERE schemaname = 'accord'") == 1
    await conn.close()


async def test_relays_starting_together_create_the_schema_once(postgres_url: str) -> None:
    stores = await asyncio.gather(*(PostgresStorage.open(postgres_url) for _ in range(4)))
    try:
        assert await stores[0].append(CAL, b"x") == 1
        conn = await asyncpg.connect(postgres_url)
        assert await conn.fetchval("SELECT count(*) FROM accord.schema_version") == 1
        await conn.close()
    finally:
        await asyncio.gather(*(store.close() for store in stores))


async def test_a_terminated_session_is_replaced_and_appends_go_on(postgres_url: str) -> None:
    store = await PostgresStorage.open(postgres_url)
    try:
        await store.append(CAL, b"before")
        admin = await asyncpg.connect(postgres_url)
        # With a timeout, pg_terminate_backend returns once the sessions are gone (not when signalled).
        killed = await admin.fetchval("SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
                                      "WHERE datname = current_database() AND pid <> pg_backend_pid()")
        await admin.close()
        assert killed >= 2  # the writer and the reader pool's session
        assert await store.append(CAL, b"after") == 2  # a fresh writer session
        assert await store.load(CAL) == [b"before", b"after"]
    finally:
        await store.close()


def test_driver_failures_are_classified_transient_corrupt_or_fatal() -> None:
    from asyncpg import exceptions as pg

    def fault(exc: BaseException) -> object:
        error = classify_pg_error(exc, "db", "commit")
        return error.fault if isinstance(error, TransientStorageError) else type(error).__name__

    assert fault(pg.AdminShutdownError("terminating connection")) is StoreFault.UNREACHABLE
    assert fault(pg.ConnectionDoesNotExistError("connection was closed")) is StoreFault.UNREACHABLE
    assert fault(ConnectionRefusedError(111, "refused")) is StoreFault.UNREACHABLE
    assert fault(pg.DeadlockDetectedError("deadlock")) is StoreFault.BUSY
    assert fault(pg.DiskFullError("no space")) is StoreFault.FULL
    assert fault(pg.DataCorruptedError("invalid page")) == "StoreCorrupt"
    assert fault(pg.UniqueViolationError("duplicate key")) == "StorageError"


async def test_an_unreachable_server_is_unavailable_with_the_url_but_not_the_password(postgres_server: object) -> None:
    port = postgres_server.port  # type: ignore[attr-defined]
    with pytest.raises(StoreUnavailable, match=r"postgresql://postgres:\*\*\*@127\.0\.0\.1") as info:
        await open_storage(f"postgresql://postgres:sekrit@127.0.0.1:{port}/no_such_database")
    assert "sekrit" not in str(info.value)


async def test_a_row_under_a_stale_fence_is_refused_and_the_rest_of_its_commit_stored(postgres_url: str) -> None:
    store = await PostgresStorage.open(postgres_url)
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("INSERT INTO accord.leases (name, epoch) VALUES ('home', 2)")
        stale, current = Fence("home", 1), Fence("home", 2)
        seqs = await store.append_many([(CAL, b"client"), (CAL, b"late verdict"), (CAL, b"verdict")],
                                       fences=[None, stale, current])
        assert seqs == [1, FENCED, 2]
        assert await store.load(CAL) == [b"client", b"verdict"]
        assert store.stats.fenced == 1
        assert await store.append_many([(OTHER, b"x")], fences=[Fence("never-taken", 1)]) == [FENCED]
    finally:
        await conn.close()
        await store.close()


async def test_a_takeover_bump_waits_for_a_commit_that_checked_the_old_epoch(postgres_url: str) -> None:
    """The fence row is read FOR SHARE: a bump (a new holder taking the lease) waits until the
    commit that checked the old epoch ends, so the new holder reads that commit's rows."""
    store = await PostgresStorage.open(postgres_url)
    holder, taker = await asyncpg.connect(postgres_url), await asyncpg.connect(postgres_url)
    try:
        await holder.execute("INSERT INTO accord.leases (name, epoch) VALUES ('home', 1)")
        tx = holder.transaction()
        await tx.start()
        assert await holder.fetchval("SELECT epoch FROM accord.leases WHERE name = 'home' FOR SHARE") == 1
        bump = asyncio.ensure_future(taker.fetchval("UPDATE accord.leases SET epoch = epoch + 1 WHERE name = 'home' "
                                                    "RETURNING epoch"))
        done, _ = await asyncio.wait([bump], timeout=0.3)
        assert not done  # blocked by the share lock
        await holder.execute("INSERT INTO accord.meta (key, value) VALUES ('written-under-1', 'x')")
        await tx.commit()
        assert await asyncio.wait_for(bump, 5) == 2
        assert await taker.fetchval("SELECT value FROM accord.meta WHERE key = 'written-under-1'") == "x"
        assert await store.append_many([(CAL, b"late")], fences=[Fence("home", 1)]) == [FENCED]
    finally:
        await holder.close()
        await taker.close()
        await store.close()


async def test_a_version_1_store_is_migrated_to_hold_leases_and_decided_marks(postgres_url: str) -> None:
    await (await PostgresStorage.open(postgres_url)).close()
    conn = await asyncpg.connect(postgres_url)
    await conn.execute("DROP TABLE accord.leases, accord.decided; UPDATE accord.schema_version SET version = 1")
    store = await PostgresStorage.open(postgres_url)
    try:
        assert await conn.fetchval("SELECT version FROM accord.schema_version") == 2
        assert await store.append_many([(CAL, b"x")], fences=[Fence("home", 1)]) == [FENCED]
        assert await store.undecided() == []
    finally:
        await conn.close()
        await store.close()


async def test_decided_marks_are_fenced_and_name_the_calendars_written_past_them(postgres_url: str) -> None:
    store = await PostgresStorage.open(postgres_url)
    conn = await asyncpg.connect(postgres_url)
    try:
        await conn.execute("INSERT INTO accord.leases (name, epoch) VALUES ('home', 2)")
        await store.append_many([(CAL, b"a"), (CAL, b"b"), (OTHER, b"c")])
        assert await store.undecided() == [CAL, OTHER]  # no marks yet
        assert await store.mark_decided({CAL: 2, OTHER: 1}, Fence("home", 2))
        assert await store.undecided() == []
        assert not await store.mark_decided({CAL: 5}, Fence("home", 1))  # a deposed holder's mark
        await store.append(CAL, b"d")
        assert await store.undecided() == [CAL]
        assert await store.mark_decided({CAL: 1}, Fence("home", 2))  # never moves back
        assert await conn.fetchval("SELECT seq FROM accord.decided WHERE calendar = $1", CAL) == 2
    finally:
        await conn.close()
        await store.close()
