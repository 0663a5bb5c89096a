"""Large calendars: cold sync to a new terminal, upload of offline writes, open time and memory.

    .venv/bin/python benchmarks/large_calendar_bench.py                      # 20k, 50k, 100k reservations
    .venv/bin/python benchmarks/large_calendar_bench.py --sizes 20000,50000
    .venv/bin/python benchmarks/large_calendar_bench.py --quick              # 2k (CI smoke)

Measures and prints; asserts nothing. Per size N:

1. **state**: a calendar of N reservations built in this process (desk 1 books them in one
   transaction; desk 2 cancels every 50th and rewrites the note of every 50th + 1), stored as one row
   of a relay's SQLite store; bytes of state per reservation.
2. **open**: reading that row and loading it into a replica (what a relay does on first use).
3. **cold sync**: an ``accord relay`` child process (default limits: 8 MiB messages) and a new
   ``Terminal`` with an empty store: seconds from start until ``synced()`` returns, the messages
   and bytes it received and the largest message; the relay's RSS before and after (the calendar
   loaded and served), per reservation.
4. **upload**: a terminal store holding N bookings made offline (one transaction, through the
   engine's ``Calendar.book``), then a fresh relay: seconds from start until ``synced()`` (every
   booking acknowledged), the messages and bytes the terminal sent.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from pycrdt import Doc, Map

from accord import __version__
from accord.engine.calendar import Calendar
from accord.engine.model import CalendarId
from accord.engine.protocol import DEFAULT_MAX_MESSAGE_BYTES, piece_bytes
from accord.engine.replica import Replica
from accord.engine.storage import CompactionPolicy, SqliteStorage
from accord.relay.process import RelayProcess
from accord.terminal.client import Terminal
from accord.terminal.store import TerminalStore

CALENDAR = CalendarId("bench-large")
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
STAMP = "2026-11-30T08:00:00Z"
MIB = 1024 * 1024
SYNC_TIMEOUT_S = 600.0


def build_state(n: int) -> bytes:
    """N reservations by desk 1, every 50th cancelled and every 50th + 1 re-noted by desk 2."""
    desk1 = Doc(client_id=1001)
    reservations = desk1.get("reservations", type=Map)
    with desk1.transaction():
        for i in range(n):
            start = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=15 * (i // 20))
            rid = f"0193{i >> 16:04x}-{i & 0xFFFF:04x}-7000-8000-{i:012x}"
            reservations[rid] = Map({
                "id": rid, "calendar": CALENDAR, "resource": f"room-{i % 20}",
                "start": start.strftime("%Y-%m-%dT%H:%M:%SZ"),
                "end": (start + timedelta(minutes=15)).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "patient": f"P-{i:06d}", "service": "checkup", "note": "", "requested_at": STAMP,
                "created_by": "desk-1", "created_at": STAMP, "updated_by": "desk-1", "updated_at": STAMP,
            })
    desk2 = Doc(client_id=2002)
    desk2.apply_update(desk1.get_update())
    theirs = desk2.get("reservations", type=Map)
    with desk2.transaction():
        for i in range(0, n, 50):
            theirs[f"0193{i >> 16:04x}-{i & 0xFFFF:04x}-7000-8000-{i:012x}"]["cancelled_at"] = STAMP
        for i in range(1, n, 50):
            theirs[f"0193{i >> 16:04x}-{i & 0xFFFF:04x}-7000-8000-{i:012x}"]["note"] = "moved to the afternoon"
    update: bytes = desk2.get_update()
    return update


async def store_state(path: Path, state: bytes) -> None:
    storage = await SqliteStorage.open(path)
    try:
        await storage.append(CALENDAR, state)
    finally:
        await storage.close()


async def open_time(path: Path) -> float:
    """Seconds to read the calendar's rows and load them into a replica (a relay's first use)."""
    gc.collect()
    began = time.perf_counter()
    storage = await SqliteStorage.open(path)
    try:
        replica = Replica(CALENDAR, actor="relay")
        replica.load(await storage.load(CALENDAR))
    finally:
        await storage.close()
    seconds = time.perf_counter() - began
    replica.close()
    return seconds


def rss(relay: RelayProcess) -> int:
    return int(psutil.Process(relay.pid).memory_info().rss)


async def bench_cold_sync(folder: Path, n: int, state: bytes) -> None:
    db = folder / f"cold-{n}.sqlite"
    await store_state(db, state)
    print(f"state, {n} reservations: {len(state) / MIB:.1f} MiB, {len(state) / n:.0f} bytes per reservation")
    print(f"open, {n} reservations: {await open_time(db):.2f} s (read the stored row, load it into a replica)")
    relay = await RelayProcess(folder, f"cold-{n}", db=str(db)).start()
    try:
        before = rss(relay)
        began = time.perf_counter()
        async with Terminal(relay=relay.url, store=folder / f"cold-{n}-terminal.sqlite", name="new-desk") as desk:
            await desk.open(CALENDAR)
            await desk.synced(timeout=SYNC_TIMEOUT_S)
            seconds = time.perf_counter() - began
            link = desk.link
            assert link is not None
            after = rss(relay)
        print(f"cold sync to a new terminal, {n} reservations: {seconds:.2f} s, {link.messages_in} messages, "
              f"{link.bytes_in / MIB:.1f} MiB, largest {link.largest_in / MIB:.2f} MiB "
              f"(limit {DEFAULT_MAX_MESSAGE_BYTES / MIB:.0f} MiB, pieces {piece_bytes(DEFAULT_MAX_MESSAGE_BYTES) / MIB:.2f} MiB)")
        print(f"relay memory, {n} reservations: RSS {before / MIB:.0f} MiB before, {after / MIB:.0f} MiB with the "
              f"calendar loaded and served ({(after - before) / n / 1024:.1f} KiB per reservation)")
    finally:
        await relay.stop()


async def bench_upload(folder: Path, n: int) -> None:
    path = folder / f"upload-{n}-terminal.sqlite"
    store = TerminalStore(path, "desk-1", has_relay=True, compaction=CompactionPolicy())
    await store.open()
    try:
        await store.open_calendar(CALENDAR)

        def book_all(calendar: Calendar) -> None:
            with calendar.doc.transaction(origin=calendar.origin):
                for i in range(n):
                    start = datetime(2026, 12, 1, tzinfo=UTC) + timedelta(minutes=15 * (i // 20))
                    calendar.book(resource=f"room-{i % 20}", start=start, end=start + timedelta(minutes=15),
                                  patient=f"P-{i:06d}", now=NOW)

        await store.write(CALENDAR, book_all)
    finally:
        await store.close()
    relay = await RelayProcess(folder, f"upload-{n}").start()
    try:
        began = time.perf_counter()
        async with Terminal(relay=relay.url, store=path, name="desk-1") as desk:
            opened = time.perf_counter() - began
            await desk.synced(timeout=SYNC_TIMEOUT_S)
            seconds = time.perf_counter() - began
            link = desk.link
            assert link is not None
            after = rss(relay)
        print(f"upload of {n} offline bookings: {seconds:.2f} s (terminal open {opened:.2f} s), "
              f"{link.messages_out} messages, {link.bytes_out / MIB:.1f} MiB sent; relay RSS after {after / MIB:.0f} MiB")
    finally:
        await relay.stop()


async def main_async(sizes: list[int]) -> None:
    print(f"machine: {os.cpu_count()} cpus, {platform.platform()}, python {platform.python_version()}, "
          f"accord {__version__}; relays are child processes with durable SQLite (synchronous=FULL)")
    with tempfile.TemporaryDirectory(prefix="accord-large-") as tmp:
        folder = Path(tmp)
        for n in sizes:
            state = build_state(n)
            await bench_cold_sync(folder, n, state)
            del state
            await bench_upload(folder, n)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="20000,50000,100000",
                        help="reservation counts, comma-separated (default 20000,50000,100000)")
    parser.add_argument("--quick", action="store_true", help="smoke size: 2000 reservations")
    args = parser.parse_args()
    sizes = [2000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    asyncio.run(main_async(sizes))


if __name__ == "__main__":
    main()
