"""Storage faults heal without a restart: another process holding the write lock, a full disk.

The relay holds its writers back while it retries (nobody is closed), reports the fault on
/healthz and /metrics, and resumes by itself; what it acknowledged is stored, and what it did
not store it neither acknowledged nor forwarded. A corrupt database stays fatal, with a clear
error. A terminal's write that failed to store leaves no trace: the caller gets StorageError,
nothing goes out on the next sync, and a retry books once.

The disk-full tests mount a small tmpfs (tests run as root in CI) and skip elsewhere.
"""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import os
import sqlite3
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from relays import Relay, relay_config
from wire import WireClient, wait_for_any

from accord.engine.errors import CloseCode, StorageError, StoreCorrupt, StoreFault, TransientStorageError
from accord.engine.model import CalendarId
from accord.engine.protocol import covers
from accord.engine.replica import Replica
from accord.engine.storage import SqliteStorage, classify_error
from accord.terminal.client import Terminal
from accord.terminal.link import Backoff, LinkState

CAL = "clinic-1"
START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)
LOCK_HELD_S = 6.0
# Holds the write lock of the database at argv[1] for argv[2] seconds, as another process would.
LOCKER = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("ROLLBACK")
"""


# ---- helpers ------------------------------------------------------------------------------------


async def http_get(relay: Relay, path: str) -> tuple[int, str]:
    """``(status, body)`` of a GET on the relay's port (a 503 is an answer, not an error)."""
    url = relay.url.replace("ws://", "http://") + path

    def fetch() -> tuple[int, str]:
        try:
            with urllib.request.urlopen(url, timeout=5) as response:
                return response.status, response.read().decode()
        except urllib.error.HTTPError as exc:
            return exc.code, exc.read().decode()

    return await asyncio.to_thread(fetch)


def metric(body: str, name: str) -> float:
    return float(next(line for line in body.splitlines() if line.startswith(name + " ")).split()[-1])


def own_clocks(client: WireClient) -> dict[int, int]:
    replica = client.replica(CAL)
    return {replica.doc.client_id: replica.clocks().get(replica.doc.client_id, 0)}


def is_acked(client: WireClient) -> bool:
    return covers(client.acked.get(CAL, {}), own_clocks(client))


async def stored_ids(db: Path) -> set[str]:
    """The reservations in the relay's file, read through a second connection."""
    store = await SqliteStorage.open(db)
    try:
        replica = Replica(CAL)
        replica.load(await store.load(CalendarId(CAL)))
        return set(replica.calendar.reservations.keys())
    finally:
        await store.close()


def messages(caplog: pytest.LogCaptureFixture, text: str) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == text]


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, always unmounted afterwards (skipped where mounting is not allowed)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a small tmpfs (the CI runs tests as root)")
    mount = tmp_path / "disk"
    mount.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)],
                            capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip() or result.returncode}")
    try:
        yield mount
    finally:
        if subprocess.run(["umount", str(mount)], capture_output=True, timeout=10).returncode != 0:
            subprocess.run(["umount", "-l", str(mount)], check=True, timeout=10)  # still open somewhere: detach


def fill(disk: Path) -> Path:
    """Fill what is left of ``disk`` with a ballast file; return it (remove it to free the space)."""
    ballast = disk / "ballast"
    fd = os.open(ballast, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for chunk in (b"\0" * 65536, b"\0" * 512):  # big chunks, then the last crumbs
            for _ in range(1 + 64 * 1024 * 1024 // len(chunk)):  # bounded: more than the disk holds
                try:
                    os.write(fd, chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC, exc
                    break
    finally:
        os.close(fd)
    return ballast


# ---- classification -----------------------------------------------------------------------------


def test_a_held_write_lock_is_transient_and_a_damaged_file_is_fatal(tmp_path: Path) -> None:
    db = tmp_path / "a.sqlite"
    holder = sqlite3.connect(db, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(db, isolation_level=None, timeout=0)
    with pytest.raises(sqlite3.OperationalError) as busy:
        other.execute("BEGIN IMMEDIATE")
    error = classify_error(busy.value, str(db), "commit")
    assert isinstance(error, TransientStorageError) and error.fault is StoreFault.BUSY
    assert str(db) in str(error) and "database is locked" in str(error)
    holder.close()
    other.close()

    garbage = tmp_path / "garbage.sqlite"
    garbage.write_bytes(b"not a database " * 512)
    with pytest.raises(sqlite3.DatabaseError) as damaged:
        sqlite3.connect(garbage).execute("SELECT * FROM sqlite_master")
    error = classify_error(damaged.value, str(garbage), "commit")
    assert isinstance(error, StoreCorrupt) and not isinstance(error, TransientStorageError)
    assert "restore it from a backup" in str(error)

    full = classify_error(OSError(errno.ENOSPC, "No space left on device"), "x", "commit")
    assert isinstance(full, TransientStorageError) and full.fault is StoreFault.FULL
    assert type(classify_error(ValueError("no active connection"), "x", "commit")) is StorageError


# ---- the relay ----------------------------------------------------------------------------------


@pytest.mark.slow
async def test_write_lock_held_by_another_process_holds_writers_back_then_stores_everything(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="accord.relay.pipeline")
    async with Relay(relay_config(tmp_path, "a")) as relay, \
            WireClient(relay.url, actor="desk-1") as one, WireClient(relay.url, actor="desk-2") as two:
        clients = [one, two]
        for client in clients:
            await client.open(CAL)
        ids = {client: [await client.book(CAL, resource=f"room-{n}")] for n, client in enumerate(clients)}
        for client in clients:
            await client.wait_acked(CAL)

        locker = await asyncio.create_subprocess_exec(sys.executable, "-c", LOCKER, str(relay.config.db_path),
                                                      str(LOCK_HELD_S), stdout=asyncio.subprocess.PIPE)
        try:
            assert locker.stdout is not None
            async with asyncio.timeout(10):
                assert await locker.stdout.readline() == b"locked\n"
            for n, client in enumerate(clients):
                ids[client] += [await client.book(CAL, resource=f"room-{n}", hour=10 + i) for i in range(5)]
            await relay.wait_for(lambda: relay.pipeline.hold is not None, timeout_s=5)
            for n, client in enumerate(clients):  # sent while the store fails: their readers are held back
                ids[client] += [await client.book(CAL, resource=f"room-{n}", hour=16 + i) for i in range(3)]
            await relay.wait_for(lambda: relay.metrics.connections_held == 2, timeout_s=5)

            status, body = await http_get(relay, "/healthz")
            assert status == 503
            assert "database is locked" in body and "(busy)" in body and CAL in body and str(relay.config.db_path) in body
            _, text = await http_get(relay, "/metrics")
            assert metric(text, 'accord_store_failing{fault="busy"}') == 1
            assert metric(text, "accord_store_connections_held") == 2
            assert not any(is_acked(client) for client in clients)  # nothing unstored is acknowledged
            assert not one.closed.is_set() and not two.closed.is_set()
            assert len(messages(caplog, "store failing; writes held back and retried")) == 1

            await relay.wait_for(lambda: relay.pipeline.hold is None, timeout_s=LOCK_HELD_S + 10)
            async with asyncio.timeout(10):
                assert await locker.wait() == 0
            for client in clients:
                await client.wait_acked(CAL)
        finally:
            if locker.returncode is None:
                locker.kill()
                await locker.wait()

        everything = set(ids[one]) | set(ids[two])
        assert len(everything) == 18
        await wait_for_any(clients, lambda: all(everything <= set(c.replica(CAL).calendar.reservations.keys())
                                                for c in clients))
        assert not one.closed.is_set() and not two.closed.is_set()  # back-pressure, never a close
        assert await http_get(relay, "/healthz") == (200, "ok\n")
        _, text = await http_get(relay, "/metrics")
        assert metric(text, 'accord_store_retries_total{fault="busy"}') >= 2
        assert metric(text, 'accord_store_failing{fault="busy"}') == 0
        assert len(messages(caplog, "store writes resumed")) == 1
        assert everything <= await stored_ids(relay.config.db_path)


@pytest.mark.slow
async def test_relay_on_a_full_disk_holds_writes_and_resumes_when_space_is_freed(
        tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="accord.relay.pipeline")
    config = dataclasses.replace(relay_config(tmp_path, "a"), db_path=small_disk / "a.sqlite")
    async with Relay(config) as relay, WireClient(relay.url, actor="desk-1") as writer, \
            WireClient(relay.url, actor="watcher") as watcher:
        await writer.open(CAL)
        await watcher.open(CAL)
        first = await writer.book(CAL)
        await writer.wait_acked(CAL)

        ballast = fill(small_disk)
        later = [await writer.book(CAL, resource="room-2", hour=10 + i, note="n" * 500) for i in range(5)]
        await relay.wait_for(lambda: relay.pipeline.hold is not None, timeout_s=10)
        status, body = await http_get(relay, "/healthz")
        assert status == 503 and "(full)" in body and "disk is full" in body and CAL in body
        held = messages(caplog, "store failing; writes held back and retried")
        assert len(held) == 1 and held[0].fault == StoreFault.FULL  # type: ignore[attr-defined]
        _, text = await http_get(relay, "/metrics")
        assert metric(text, 'accord_store_failing{fault="full"}') == 1
        assert not is_acked(writer)
        # Not forwarded either: the watcher has the acknowledged booking only, and a newcomer's
        # sync waits (it would read the replica, which holds what is not stored yet).
        assert set(watcher.replica(CAL).calendar.reservations.keys()) == {first}
        later.append(await writer.book(CAL, resource="room-3", hour=16))
        async with WireClient(relay.url, actor="newcomer") as newcomer:
            await newcomer.open(CAL)
            await relay.wait_for(lambda: relay.metrics.connections_held == 2, timeout_s=5)  # writer and newcomer
            assert not newcomer.session.is_synced(CAL) and not newcomer.replica(CAL).calendar.reservations

            ballast.unlink()
            await relay.wait_for(lambda: relay.pipeline.hold is None, timeout_s=10)
            await writer.wait_acked(CAL)
            await newcomer.wait_synced(CAL)
            clients = [watcher, newcomer]
            await wait_for_any(clients, lambda: all({first, *later} <= set(c.replica(CAL).calendar.reservations.keys())
                                                    for c in clients))
        assert not writer.closed.is_set()
        assert await http_get(relay, "/healthz") == (200, "ok\n")
        assert len(messages(caplog, "store writes resumed")) == 1
        assert {first, *later} <= await stored_ids(config.db_path)


async def test_relay_stopped_while_its_disk_is_full_stops_promptly_and_acknowledged_nothing_unstored(
        tmp_path: Path, small_disk: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="accord.relay.pipeline")
    config = dataclasses.replace(relay_config(tmp_path, "a"), db_path=small_disk / "a.sqlite")
    relay = Relay(config)
    await relay.start()
    try:
        relay.pipeline.held_drain_timeout_s = 0.2
        async with WireClient(relay.url) as writer:
            await writer.open(CAL)
            first = await writer.book(CAL)
            await writer.wait_acked(CAL)
            ballast = fill(small_disk)
            await writer.book(CAL, hour=10)
            await relay.wait_for(lambda: relay.pipeline.hold is not None, timeout_s=10)
            await writer.book(CAL, hour=11)  # sent while the store fails: its reader is held back
            await relay.wait_for(lambda: relay.metrics.connections_held == 1, timeout_s=10)
            async with asyncio.timeout(15):
                await relay.stop()  # a held reader must not keep the shutdown waiting
            await writer.wait_for(lambda: writer.closed.is_set())
            assert writer.close_code == 1001 and not is_acked(writer)
    finally:
        await relay.stop()
    assert messages(caplog, "stopping with updates not stored; they were never acknowledged, so their senders "
                            "still hold them and send them again")
    ballast.unlink()
    assert await stored_ids(config.db_path) == {first}


async def test_corrupt_database_stays_fatal_with_a_clear_error(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay, WireClient(relay.url) as client:
        await client.open(CAL)
        await client.book(CAL)
        await client.wait_acked(CAL)
        db = relay.config.db_path
        checkpoint = sqlite3.connect(db, isolation_level=None)  # move everything into the main file...
        checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        checkpoint.close()
        with open(db, "r+b") as file:  # ...and damage every page after the header page
            file.seek(4096)
            file.write(b"\xff" * (os.path.getsize(db) - 4096))
        await client.book(CAL, hour=11)
        await client.wait_for(lambda: client.closed.is_set())
        assert client.close_code == 1011
        status, body = await http_get(relay, "/healthz")
        assert status == 503 and "damaged" in body and "restore it from a backup" in body
        _, text = await http_get(relay, "/metrics")
        assert metric(text, 'accord_store_failing{fault="fatal"}') == 1
        assert all(metric(text, f'accord_store_retries_total{{fault="{fault}"}}') == 0 for fault in StoreFault)


# ---- the terminal -------------------------------------------------------------------------------


@pytest.mark.slow
async def test_terminal_write_that_failed_to_store_leaves_no_trace_and_a_retry_books_once(
        tmp_path: Path, small_disk: Path) -> None:
    async with Relay(relay_config(tmp_path, "a")) as relay, \
            Terminal(relay=relay.url, store=small_disk / "desk.sqlite", name="desk-1",
                     backoff=Backoff(initial_s=0.05, max_s=0.2)) as t:
        await t.book(CAL, resource="room-1", start=START, end=START + timedelta(minutes=30), patient="P-1")
        await t.synced(timeout=10)
        before = t.snapshot(CAL)

        ballast = fill(small_disk)
        slot = {"resource": "room-1", "start": START + timedelta(hours=1), "end": START + timedelta(hours=2)}
        with pytest.raises(StorageError) as failed:
            await t.book(CAL, **slot, patient="P-2")
        assert isinstance(failed.value, TransientStorageError) and failed.value.fault is StoreFault.FULL
        assert t.snapshot(CAL) == before  # no trace in memory
        assert [r.patient for r in await t.reservations(CAL)] == ["P-1"]

        # A fresh sync with the relay must not carry it either.
        for connection in list(relay.connections):
            await connection.close(CloseCode.TRY_AGAIN_LATER, "test: resync")
        await t.wait_link_change(LinkState.ONLINE, timeout=5)
        await t.synced(timeout=10)
        assert [r.patient for r in (await relay.calendar(CAL)).list()] == ["P-1"]

        ballast.unlink()
        retried = await t.book(CAL, **slot, patient="P-2")
        await t.synced(timeout=10)
        assert [r.patient for r in await t.reservations(CAL)] == ["P-1", "P-2"]
        assert [r.id for r in (await relay.calendar(CAL)).list() if r.patient == "P-2"] == [retried.id]
    async with Terminal(relay=None, store=small_disk / "desk.sqlite", name="desk-1") as again:  # and in the file
        assert [r.patient for r in await again.reservations(CAL)] == ["P-1", "P-2"]
