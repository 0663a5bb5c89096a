"""Engine throughput: merging updates, durable appends, loading a calendar.

    .venv/bin/python benchmarks/engine_bench.py              # N = 100000
    .venv/bin/python benchmarks/engine_bench.py --n 2000     # quick (make bench-quick, CI)

Prints one line per figure and asserts nothing. Times are wall clock; the merge figures also
give this process's CPU time (``time.process_time``), which stays meaningful on a busy machine.

1. **merge**: a source replica makes N bookings, one transaction each, and its N incremental
   updates are applied twice, in alternating chunks so that both see the same machine load:
   through accord's engine path (``PeerSync.receive`` of a framed SYNC_UPDATE, ``Replica.apply``,
   ``PeerSync.update`` of the resulting change: the bytes a relay would broadcast) and raw
   (``pycrdt.Doc.apply_update``). The ratio is raw time / engine time (1.0 = no overhead).
   Most of the gap is pycrdt's own: the document observer that captures each change costs
   ~20% (pycrdt builds every TransactionEvent with its update already encoded) and a
   transaction with an origin ~10%; accord's framing and events cost the rest.
2. **append**: ``SqliteStorage`` (WAL, synchronous=FULL) with one writer awaiting each append,
   then 100 concurrent writers (group commit); commits per update is fsyncs per update.
3. **load**: the N bookings stored one row each; time to read the rows and ``Replica.load``
   them, before and after compaction into one snapshot row.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from importlib.metadata import version
from pathlib import Path

import pycrdt

from accord.engine.model import CalendarId
from accord.engine.replica import Replica
from accord.engine.storage import SqliteStorage, merge_log
from accord.engine.sync import PeerSync, UpdateReceived

CALENDAR = CalendarId("bench")
NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
BASE = datetime(2026, 12, 1, tzinfo=UTC)
CHUNK = 500
SINGLE_WRITER_APPENDS = 2000
CONCURRENT_WRITERS = 100
CONCURRENT_APPENDS = 20_000


def make_updates(n: int) -> tuple[Replica, list[bytes]]:
    """N single-reservation create updates, captured from a source replica."""
    source = Replica(CALENDAR, actor="desk-1", client_id=7)
    calendar = source.calendar
    updates: list[bytes] = []
    for i in range(n):
        start = BASE + timedelta(minutes=30 * (i // 50))
        calendar.book(resource=f"room-{i % 50}", start=start, end=start + timedelta(minutes=30), patient=f"P-{i:06d}",
                      service="checkup", now=NOW + timedelta(milliseconds=i))
        if (i + 1) % CHUNK == 0 or i == n - 1:
            updates += [change.update for change in source.take_changes()]
    return source, updates


class Clock:
    """Accumulates wall and CPU time over many timed sections."""

    def __init__(self) -> None:
        self.wall = 0.0
        self.cpu = 0.0

    def run(self, work: Callable[[], None]) -> None:
        wall, cpu = time.perf_counter(), time.process_time()
        work()
        self.wall += time.perf_counter() - wall
        self.cpu += time.process_time() - cpu


def bench_merge(updates: list[bytes], source: Replica) -> None:
    sender = PeerSync()
    frames = [sender.update(CALENDAR, update) for update in updates]  # the sender's cost, not measured
    gc.collect()
    gc.freeze()  # the inputs are long-lived: keep the collector from rescanning them in either path

    receiver, broadcast = PeerSync(), PeerSync()
    replica = Replica(CALENDAR, actor="relay", client_id=1)
    raw = pycrdt.Doc()
    outgoing: list[bytes] = []

    def engine_chunk(chunk: list[bytes]) -> Callable[[], None]:
        def work() -> None:
            receive, apply, update, out = receiver.receive, replica.apply, broadcast.update, outgoing.append
            for frame in chunk:
                for event in receive(frame):
                    if type(event) is UpdateReceived:
                        change = apply(event.update)
                        if change is not None:
                            out(update(event.calendar, change.update))
        return work

    def raw_chunk(chunk: list[bytes]) -> Callable[[], None]:
        def work() -> None:
            apply_update = raw.apply_update
            for update in chunk:
                apply_update(update)
        return work

    engine_clock, raw_clock = Clock(), Clock()
    for first in range(0, len(updates), CHUNK):
        # Alternate which goes first, so neither always runs on a warmer cache.
        pair = [(raw_clock, raw_chunk(updates[first : first + CHUNK])),
                (engine_clock, engine_chunk(frames[first : first + CHUNK]))]
        for clock, work in pair if (first // CHUNK) % 2 == 0 else reversed(pair):
            clock.run(work)

    gc.unfreeze()
    assert replica.calendar.to_py() == source.calendar.to_py() and len(outgoing) == len(updates)
    n = len(updates)
    print(f"merge updates: {n} (one booking each, {sum(map(len, updates)) / n:.0f} bytes on average)")
    print(f"merge raw pycrdt apply_update: {n / raw_clock.wall:,.0f} updates/s (cpu {n / raw_clock.cpu:,.0f} updates/s)")
    print(f"merge engine receive+apply+broadcast: {n / engine_clock.wall:,.0f} updates/s "
          f"(cpu {n / engine_clock.cpu:,.0f} updates/s)")
    print(f"merge ratio (engine/raw): {raw_clock.wall / engine_clock.wall:.2f} (cpu {raw_clock.cpu / engine_clock.cpu:.2f})")


async def bench_append(directory: Path, updates: list[bytes]) -> None:
    sample = updates[: min(len(updates), 1000)]

    store = await SqliteStorage.open(directory / "single.sqlite")
    count = max(1, min(len(updates) // 4, SINGLE_WRITER_APPENDS))  # each append waits for its own fsync
    started = time.perf_counter()
    for i in range(count):
        await store.append(CALENDAR, sample[i % len(sample)])
    elapsed = time.perf_counter() - started
    commits = store.stats.commits
    await store.close()
    print(f"append 1 writer: {count / elapsed:,.0f} updates/s ({count} appends, "
          f"{commits / count:.2f} commits (fsyncs) per update)")

    store = await SqliteStorage.open(directory / "group.sqlite")
    per_writer = max(1, min(len(updates), CONCURRENT_APPENDS) // CONCURRENT_WRITERS)

    async def writer(k: int) -> None:
        for i in range(per_writer):
            await store.append(CALENDAR, sample[(k * per_writer + i) % len(sample)])

    started = time.perf_counter()
    await asyncio.gather(*(writer(k) for k in range(CONCURRENT_WRITERS)))
    elapsed = time.perf_counter() - started
    count = per_writer * CONCURRENT_WRITERS
    commits = store.stats.commits
    await store.close()
    print(f"append {CONCURRENT_WRITERS} writers: {count / elapsed:,.0f} updates/s ({count} appends, "
          f"{commits / count:.3f} commits (fsyncs) per update)")


async def bench_load(directory: Path, updates: list[bytes], expected: dict[str, object]) -> None:
    path = directory / "load.sqlite"
    store = await SqliteStorage.open(path)
    for first in range(0, len(updates), CHUNK):
        await store.append_many([(CALENDAR, u) for u in updates[first : first + CHUNK]])

    async def load() -> tuple[float, int, int]:
        started = time.perf_counter()
        rows = await store.load(CALENDAR)
        replica = Replica(CALENDAR, actor="relay", client_id=1)
        replica.load(rows)
        elapsed = time.perf_counter() - started
        assert replica.calendar.to_py() == expected
        return elapsed, len(rows), sum(map(len, rows))

    elapsed, rows, size = await load()
    print(f"load {len(updates)} reservations uncompacted: {elapsed:.3f} s ({rows} rows, {size / 1e6:.1f} MB)")
    started = time.perf_counter()
    _, top = await store.log_length(CALENDAR)
    await store.compact(CALENDAR, top, merge_log(await store.load(CALENDAR)))
    compacted_in = time.perf_counter() - started
    elapsed, rows, size = await load()
    print(f"load {len(updates)} reservations compacted: {elapsed:.3f} s ({rows} row, {size / 1e6:.1f} MB; "
          f"compaction took {compacted_in:.3f} s)")
    await store.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="updates / reservations (default 100000)")
    args = parser.parse_args(argv)
    if args.n < 1:
        parser.error("--n must be at least 1")

    print(f"machine: {os.cpu_count()} cpus, {platform.platform()}, python {platform.python_version()}, "
          f"pycrdt {version('pycrdt')}, accord {version('accord')}")
    started = time.perf_counter()
    source, updates = make_updates(args.n)
    print(f"setup: {args.n} bookings made in {time.perf_counter() - started:.1f} s")
    bench_merge(updates, source)
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as directory:
        asyncio.run(bench_append(Path(directory), updates))
        asyncio.run(bench_load(Path(directory), updates, source.calendar.to_py()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
