"""Storage: one conformance suite for every adapter, then what only SQLite promises
(durability across reopen and SIGKILL, group commit, corruption reported, foreign files untouched)."""

from __future__ import annotations

import asyncio
import hashlib
import os
import selectors
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from accord.engine.errors import CorruptRecord, StorageError, StoreUnavailable
from accord.engine.model import CalendarId
from accord.engine.protocol import decode_state_vector
from accord.engine.replica import Replica
from accord.engine.storage import CompactionPolicy, SqliteStorage, Storage, merge_log
from accord.engine.storage.state_vectors import remember_spans, update_spans

CAL = CalendarId("clinic-1")
OTHER = CalendarId("clinic-2")
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)

Opener = Callable[[], Awaitable[Any]]


def edits(count: int, client_id: int = 1) -> tuple[Replica, list[bytes]]:
    """A replica after ``count`` bookings, each followed by a note edit, and the updates that made it."""
    replica = Replica(CAL, actor="desk", client_id=client_id)
    for i in range(count):
        start = datetime(2026, 12, 1, 8, tzinfo=UTC) + timedelta(minutes=30 * i)
        made = replica.calendar.book(resource="room-1", start=start, end=start + timedelta(minutes=30), patient=f"P-{i}",
                                     now=NOW)
        replica.calendar.edit(made.id, note=f"note {i}", now=NOW)
    return replica, [change.update for change in replica.take_changes()]


def loaded(updates: list[bytes]) -> dict[str, Any]:
    replica = Replica(CAL, actor="reader", client_id=99)
    replica.load(updates)
    return replica.calendar.to_py()


# ---- conformance: every adapter ----------------------------------------------------------------


async def test_appends_load_in_order_with_increasing_seqs(store: Storage) -> None:
    seqs = [await store.append(CAL, b"update-%d" % i) for i in range(10)]
    assert seqs == sorted(seqs) and len(set(seqs)) == 10
    assert await store.load(CAL) == [b"update-%d" % i for i in range(10)]


async def test_append_many_keeps_order_and_returns_one_seq_each(store: Storage) -> None:
    first = await store.append(CAL, b"a")
    seqs = await store.append_many([(CAL, b"b"), (OTHER, b"x"), (CAL, b"c")])
    assert len(seqs) == 3 and first < seqs[0] < seqs[2]  # seqs increase per calendar
    assert await store.load(CAL) == [b"a", b"b", b"c"]
    assert await store.load(OTHER) == [b"x"]


async def test_a_large_batch_keeps_order_and_seqs_across_calendars(store: Storage) -> None:
    """More rows than one INSERT takes (the SQLite writer puts 300 in each statement)."""
    items = [(CAL if i % 3 else OTHER, b"row-%d" % i) for i in range(701)]
    seqs = await store.append_many(items)
    assert len(seqs) == 701
    for calendar in (CAL, OTHER):  # seqs increase per calendar (PostgreSQL counts per calendar)
        mine = [seq for (name, _), seq in zip(items, seqs, strict=True) if name == calendar]
        assert mine == sorted(mine) and len(set(mine)) == len(mine)
        assert await store.load(calendar) == [data for name, data in items if name == calendar]
    assert await store.append(CAL, b"after") > max(seqs)


async def test_calendars_do_not_see_each_others_rows(store: Storage) -> None:
    await store.append(CAL, b"mine")
    await store.append(OTHER, b"theirs")
    assert await store.load(CAL) == [b"mine"]
    assert await store.load(CalendarId("clinic-3")) == []


async def test_log_length_counts_rows_and_reports_the_highest_seq(store: Storage) -> None:
    assert await store.log_length(CAL) == (0, 0)
    await store.append(OTHER, b"x")
    seqs = [await store.append(CAL, b"u") for _ in range(4)]
    assert await store.log_length(CAL) == (4, seqs[-1])


async def test_compaction_preserves_the_document_and_shrinks_the_log(store: Storage) -> None:
    replica, updates = edits(20)
    for update in updates:
        await store.append(CAL, update)
    await store.append(OTHER, b"untouched")
    rows, top = await store.log_length(CAL)
    assert rows == 40
    await store.compact(CAL, top, merge_log(await store.load(CAL)))
    assert await store.log_length(CAL) == (1, top)
    assert loaded(await store.load(CAL)) == replica.calendar.to_py()
    assert await store.load(OTHER) == [b"untouched"]


async def test_rows_after_the_compaction_point_are_kept_after_the_snapshot(store: Storage) -> None:
    replica, updates = edits(10)
    seqs = [await store.append(CAL, update) for update in updates]
    await store.compact(CAL, seqs[9], merge_log(updates[:10]))
    assert await store.log_length(CAL) == (11, seqs[-1])
    stored = await store.load(CAL)
    assert stored[1:] == updates[10:]
    assert loaded(stored) == replica.calendar.to_py()
    later = await store.append(CAL, b"after")
    assert later > seqs[-1]
    assert (await store.load(CAL))[-1] == b"after"


async def test_compaction_while_appends_run_loses_nothing(store: Storage) -> None:
    replica, updates = edits(30)
    head, tail = updates[:20], updates[20:]
    for update in head:
        await store.append(CAL, update)
    _, top = await store.log_length(CAL)

    async def compact() -> None:
        await store.compact(CAL, top, merge_log(head))

    await asyncio.gather(*(store.append(CAL, update) for update in tail), compact(), store.set_meta("k", "v"))
    assert loaded(await store.load(CAL)) == replica.calendar.to_py()
    assert (await store.log_length(CAL))[0] == 1 + len(tail)
    assert await store.get_meta("k") == "v"


async def test_calendars_lists_every_calendar_with_rows_sorted(store: Storage) -> None:
    assert await store.calendars() == []
    for name in ("b-cal", "a-cal", "site/c"):
        await store.append(CalendarId(name), b"x")
    await store.append(CalendarId("a-cal"), b"y")
    assert await store.calendars() == ["a-cal", "b-cal", "site/c"]


async def test_meta_values_are_stored_and_overwritten(store: Storage) -> None:
    assert await store.get_meta("acked:clinic-1") is None
    await store.set_meta("acked:clinic-1", "abc")
    await store.set_meta("other", "1")
    await store.set_meta("acked:clinic-1", "def")
    assert await store.get_meta("acked:clinic-1") == "def"
    assert await store.get_meta("other") == "1"


def test_compaction_policy_triggers_past_max_rows() -> None:
    policy = CompactionPolicy(max_rows=3)
    assert not policy.should_compact(3)
    assert policy.should_compact(4)


def test_merge_log_of_many_updates_equals_applying_them_in_turn() -> None:
    replica, updates = edits(600)  # 1200 updates: more than one merge chunk
    assert loaded([merge_log(updates)]) == replica.calendar.to_py()
    assert merge_log([]) == b"\x00\x00"


# ---- SQLite only ---------------------------------------------------------------------------------


async def test_reopened_sqlite_store_returns_the_same_state(tmp_path: Path) -> None:
    path = tmp_path / "relay.sqlite"
    replica, updates = edits(10)
    store = await SqliteStorage.open(path)
    await store.append_many([(CAL, u) for u in updates[:5]])
    for update in updates[5:]:
        await store.append(CAL, update)
    await store.set_meta("home", "relay-a")
    await store.close()

    store = await SqliteStorage.open(path)
    try:
        assert await store.load(CAL) == updates
        assert loaded(await store.load(CAL)) == replica.calendar.to_py()
        assert await store.get_meta("home") == "relay-a"
        assert await store.calendars() == [CAL]
    finally:
        await store.close()


async def test_concurrent_appends_share_commits(tmp_path: Path) -> None:
    store = await SqliteStorage.open(tmp_path / "group.sqlite")
    try:
        await store.append(CAL, b"warm-up")
        before = store.stats.commits
        seqs = await asyncio.gather(*(store.append(CAL, b"u%d" % i) for i in range(100)))
        commits = store.stats.commits - before
        assert len(set(seqs)) == 100
        assert commits <= 10, f"100 concurrent appends took {commits} commits"
        assert sorted(await store.load(CAL)) == sorted([b"warm-up"] + [b"u%d" % i for i in range(100)])
    finally:
        await store.close()


async def test_close_commits_appends_still_queued(tmp_path: Path) -> None:
    path = tmp_path / "flush.sqlite"
    store = await SqliteStorage.open(path)
    pending = [asyncio.create_task(store.append(CAL, b"queued-%d" % i)) for i in range(5)]
    await asyncio.sleep(0)  # let the appends reach the queue
    async with asyncio.timeout(10):
        await store.close()
        seqs = await asyncio.gather(*pending)
    assert len(set(seqs)) == 5
    with pytest.raises(StorageError, match="closed"):
        await store.append(CAL, b"too late")
    reopened = await SqliteStorage.open(path)
    try:
        assert await reopened.load(CAL) == [b"queued-%d" % i for i in range(5)]
    finally:
        await reopened.close()


CHILD = textwrap.dedent(
    """
    import asyncio, sys
    from accord.engine.storage import SqliteStorage

    async def writer(store, worker):
        for i in range(100_000):
            data = b"w%d-%d" % (worker, i)
            seq = await store.append("clinic-1", data)
            print(seq, data.decode(), flush=True)

    async def main():
        store = await SqliteStorage.open(sys.argv[1])
        print("ready", flush=True)
        await asyncio.gather(*(writer(store, w) for w in range(4)))

    asyncio.run(main())
    """
)


def read_line(proc: subprocess.Popen[bytes], selector: selectors.BaseSelector, deadline: float) -> str:
    """One line from the child's stdout, or fail at the deadline (never blocks past it)."""
    assert proc.stdout is not None
    while True:
        remaining = deadline - time.monotonic()
        assert remaining > 0, "child store process produced no output in time"
        if selector.select(remaining):
            return proc.stdout.readline().decode()


@pytest.mark.slow
async def test_every_acknowledged_append_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "crash.sqlite"
    proc = subprocess.Popen([sys.executable, "-c", CHILD, str(path)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    acknowledged: dict[int, bytes] = {}
    selector = selectors.DefaultSelector()
    try:
        assert proc.stdout is not None
        selector.register(proc.stdout, selectors.EVENT_READ)
        deadline = time.monotonic() + 30
        assert read_line(proc, selector, deadline).strip() == "ready"
        while len(acknowledged) < 300:
            line = read_line(proc, selector, deadline)
            assert line, "child store process exited early"
            seq, data = line.split()
            acknowledged[int(seq)] = data.encode()
        os.kill(proc.pid, signal.SIGKILL)  # mid-stream: more appends are in flight
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(timeout=10)
        selector.close()
    assert proc.returncode == -signal.SIGKILL

    store = await SqliteStorage.open(path)
    try:
        rows = {seq: data for seq, data, _ in await store.rows(CAL)}
        assert {seq: rows.get(seq) for seq in acknowledged} == acknowledged
        await store.load(CAL)  # every row, acknowledged or not, passes its checksum
    finally:
        await store.close()


async def make_store(path: Path, calendars: dict[CalendarId, list[bytes]]) -> None:
    store = await SqliteStorage.open(path)
    for name, updates in calendars.items():
        for update in updates:
            await store.append(name, update)
    await store.close()


def flip_bytes(path: Path, seq: int) -> None:
    """Corrupt one stored update the way a bad disk would: same length, different bytes."""
    with sqlite3.connect(path) as conn:
        (data,) = conn.execute("SELECT data FROM updates WHERE seq = ?", (seq,)).fetchone()
        damaged = bytes(b ^ 0x5A for b in data[:4]) + data[4:]
        conn.execute("UPDATE updates SET data = ? WHERE seq = ?", (damaged, seq))
    conn.close()


async def test_corrupt_row_is_reported_with_calendar_and_row_and_other_calendars_still_load(tmp_path: Path) -> None:
    path = tmp_path / "damaged.sqlite"
    _, updates = edits(3)
    await make_store(path, {CAL: updates, OTHER: [b"fine-1", b"fine-2"]})
    flip_bytes(path, 2)

    store = await SqliteStorage.open(path)
    try:
        with pytest.raises(CorruptRecord, match=r"calendar 'clinic-1': stored update row 2 is corrupt") as info:
            await store.load(CAL)
        assert (info.value.calendar, info.value.row) == (CAL, 2)
        assert "accord store check" in str(info.value)
        assert await store.load(OTHER) == [b"fine-1", b"fine-2"]
        assert (await store.log_length(CAL))[0] == len(updates)  # nothing deleted
    finally:
        await store.close()


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def sibling_files(path: Path) -> list[str]:
    return sorted(p.name for p in path.parent.iterdir())


async def test_a_file_that_is_not_sqlite_is_unavailable_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_bytes(b"these are my notes, not a database\n" * 200)
    before = digest(path)
    with pytest.raises(StoreUnavailable, match="is it an accord database"):
        await SqliteStorage.open(path)
    assert digest(path) == before
    assert sibling_files(path) == ["notes.txt"]


async def test_a_foreign_sqlite_database_is_unavailable_and_left_byte_identical(tmp_path: Path) -> None:
    path = tmp_path / "app.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        conn.execute("INSERT INTO customers (name) VALUES ('Ada')")
    conn.close()
    before = digest(path)
    with pytest.raises(StoreUnavailable, match=r"not an accord store \(it has tables \['customers'\]\)"):
        await SqliteStorage.open(path)
    assert digest(path) == before
    assert sibling_files(path) == ["app.db"]


async def test_a_store_from_a_newer_accord_is_unavailable_and_left_untouched(tmp_path: Path) -> None:
    path = tmp_path / "future.sqlite"
    await make_store(path, {CAL: [b"x"]})
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA user_version=99")
    conn.close()
    before = digest(path)
    with pytest.raises(StoreUnavailable, match=r"schema version 99.*upgrade accord"):
        await SqliteStorage.open(path)
    assert digest(path) == before


# ---- spans from the state vectors around a transaction ------------------------------------------


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2), st.sampled_from(["book", "edit", "drop-note", "deliver"]),
                          st.integers(0, 5)), min_size=1, max_size=40))
def test_spans_from_state_vectors_match_the_update_read_struct_by_struct(steps: list[tuple[int, str, int]]) -> None:
    """What the relay notes for a change (its before/after state vectors) is what reading the
    update gives, also for remote updates applied out of order (structs integrated from pending)."""
    replicas = [Replica(CAL, actor=f"desk-{i}", client_id=10 + i) for i in range(3)]
    outboxes: list[list[bytes]] = [[], [], []]  # updates replica i has not delivered yet
    made: list[list[str]] = [[], [], []]

    def check(replica: Replica) -> None:
        for change in replica.take_changes():
            walked = update_spans(change.update)
            remember_spans(change.update, change.before_state, change.state_vector)
            assert update_spans(change.update) == walked
            for i, outbox in enumerate(outboxes):
                if replicas[i] is replica:
                    outbox.append(change.update)

    for who, action, pick in steps:
        replica = replicas[who]
        if action == "book":
            start = datetime(2026, 12, 1, 8, tzinfo=UTC) + timedelta(minutes=30 * len(made[who]) + 600 * who)
            made[who].append(replica.calendar.book(resource="room-1", start=start, end=start + timedelta(minutes=30),
                                                   patient="P", now=NOW).id)
        elif action in ("edit", "drop-note") and made[who]:
            note = f"note {pick}" if action == "edit" else ""
            replica.calendar.edit(made[who][pick % len(made[who])], note=note, now=NOW)
        elif action == "deliver" and outboxes[who]:
            # newest first: earlier ones stay pending at the receiver until they arrive
            target = replicas[(who + 1 + pick % 2) % 3]
            for update in reversed(outboxes[who]):
                target.apply(update)
            check(target)
            continue
        check(replica)


async def write_alternately(first: Storage, second: Storage, updates: list[bytes]) -> None:
    """Append ``updates`` through two stores of one database, unevenly, the second compacting midway."""
    for i, update in enumerate(updates):
        await (first if i % 3 else second).append(CAL, update)
        if i == 6:
            await second.compact(CAL, (await second.log_length(CAL))[1], merge_log(updates[: i + 1]))


async def test_state_vectors_stay_exact_when_another_connection_writes_between_commits(tmp_path: Path) -> None:
    """The writer keeps the vectors it wrote, decoded; rows (and a compaction) committed by
    another connection in between must not make it advance a stale copy."""
    path = tmp_path / "shared.sqlite"
    replica, updates = edits(6)
    first, second = await SqliteStorage.open(path), await SqliteStorage.open(path)
    try:
        await write_alternately(first, second, updates)
        expected = replica.state_vector()
        for store in (first, second):
            assert decode_state_vector((await store.state_vectors([CAL]))[CAL]) == decode_state_vector(expected)
    finally:
        await first.close()
        await second.close()
