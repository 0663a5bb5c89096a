"""Relay cluster on PostgreSQL: cross-process latency, and the store's append rate.

Starts a throwaway PostgreSQL server (fsync on: durable settings; tests/postgres.py) unless
``--db`` names one, then:

1. **Appends**: ``--appends`` 300-byte rows from 100 concurrent tasks into one
   :class:`PostgresStorage` (group commit, synchronous_commit=on): rows/s and commits.
2. **Fan-out**: three ``accord relay`` processes on the database. A writer terminal on relay A
   edits one reservation ``--rate`` times a second for ``--seconds``; reader terminals on B and C
   time each edit's arrival. The latency covers client -> A -> commit + NOTIFY -> B/C fetch ->
   forward -> client: what a desk on another process of the cluster waits.

Measure and print; nothing here is a pass/fail threshold. Example:
  python benchmarks/pg_fanout_bench.py            # 1000 updates/s for 10 s
  python benchmarks/pg_fanout_bench.py --quick    # a smoke run

A reader on A itself is the baseline (the commit and a single relay's forward); B and C add the
NOTIFY, the fetch and their own forward.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from system_bench import LoadClient, pct

from accord.engine.model import CalendarId
from accord.engine.storage.postgres import PostgresStorage
from accord.relay.process import RelayProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres import running_server  # the tests' throwaway server

NOW = datetime(2026, 12, 1, 8, tzinfo=UTC)


async def bench_appends(url: str, count: int) -> str:
    store = await PostgresStorage.open(url)
    try:
        payload = os.urandom(300)
        per_task = max(1, count // 100)
        started = time.perf_counter()

        async def writer(worker: int) -> None:
            for _ in range(per_task):
                await store.append(CalendarId(f"append-{worker % 10}"), payload)

        await asyncio.gather(*(writer(w) for w in range(100)))
        elapsed = time.perf_counter() - started
        rows = per_task * 100
        return (f"appends: {rows} rows of 300 B from 100 tasks in {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s "
                f"({store.stats.commits} commits, {rows / max(1, store.stats.commits):.0f} rows/commit)")
    finally:
        await store.close()


async def bench_fanout(url: str, folder: Path, rate: int, seconds: float) -> str:
    relays = [RelayProcess(folder, name, db=url) for name in ("pg-a", "pg-b", "pg-c")]
    await asyncio.gather(*(relay.start() for relay in relays))
    sent: dict[str, float] = {}
    arrived: dict[str, list[float]] = {"a": [], "b": [], "c": []}

    def reader(tag: str, reservation: list[str]) -> LoadClient:
        def seen(client: LoadClient) -> None:
            if not reservation:
                return
            entry = client.replica.calendar.reservations.get(reservation[0])
            note = entry.get("note") if entry is not None else None
            if note in sent:
                arrived[tag].append(time.perf_counter() - sent[note])
        return LoadClient(relays["abc".index(tag)].url, f"reader-{tag}", on_update=seen)

    target: list[str] = []
    writer = await LoadClient(relays[0].url, "writer").start()
    readers = [await reader(tag, target).start() for tag in "abc"]
    try:
        made = writer.replica.calendar.book(resource="room-1", start=NOW, end=NOW + timedelta(minutes=30),
                                            patient="P-1", now=NOW)
        await writer.push()
        for client in readers:
            await client.wait(lambda client=client: made.id in client.replica.calendar.reservations, 20)
        target.append(made.id)
        total = int(rate * seconds)
        interval = 1.0 / rate
        started = time.perf_counter()
        for i in range(total):
            due = started + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            note = f"n{i}"
            writer.replica.calendar.edit(made.id, note=note, now=NOW)
            sent[note] = time.perf_counter()
            await writer.push()
        send_s = time.perf_counter() - started
        last = f"n{total - 1}"
        for client in readers:
            await client.wait(lambda client=client: (client.replica.calendar.reservations.get(made.id) or {})
                              .get("note") == last, 60)
    finally:
        for client in [writer, *readers]:
            await client.stop()
        for relay in relays:
            await relay.stop()
    lines = [f"fan-out: {total} edits at {total / send_s:,.0f}/s offered ({rate}/s asked) from a terminal on relay A"]
    for tag, values in arrived.items():
        ms = [v * 1000 for v in values]
        where = "same process (baseline: commit + forward)" if tag == "a" else "cross-process"
        lines.append(f"  {where} latency A -> {tag.upper()}: p50 {pct(ms, 0.5):.2f} ms, p99 {pct(ms, 0.99):.2f} ms, "
                     f"max {max(ms):.2f} ms ({len(ms)} of {total} edits timed)")
    return "\n".join(lines)


async def run(args: argparse.Namespace, url: str, folder: Path) -> None:
    print(await bench_appends(url, args.appends))
    print(await bench_fanout(url, folder, args.rate, args.seconds))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, help="a postgresql:// URL of an empty database (default: a throwaway server)")
    parser.add_argument("--rate", type=int, default=1000, help="edits per second (default 1000)")
    parser.add_argument("--seconds", type=float, default=10.0, help="how long to send (default 10)")
    parser.add_argument("--appends", type=int, default=20_000, help="rows for the append benchmark (default 20000)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 200 edits/s for 1 s, 2000 appends")
    args = parser.parse_args(argv)
    if args.quick:
        args.rate, args.seconds, args.appends = 200, 1.0, 2000
    print(f"machine: {os.cpu_count()} cpus, {platform.platform()}, python {platform.python_version()}")
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pg-fanout-")))
        url = args.db
        if url is None:
            server = stack.enter_context(running_server(fsync=True))
            url = server.database()
            print(f"postgres: throwaway server from {server.binaries} (fsync on, synchronous_commit on)")
        asyncio.run(run(args, url, folder))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
