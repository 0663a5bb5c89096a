"""Relay cluster on PostgreSQL: how long the home role takes to fail over.

Starts a throwaway PostgreSQL server (fsync on; tests/postgres.py) unless ``--db`` names one,
and three ``accord relay`` processes on it, all started with ``--home clinic-*`` (one holds the
home lease and decides). Then, ``--kills`` times, alternating:

- **SIGKILL** the process holding the lease (then start it again), or
- **SIGSTOP** it (frozen: its lock session stays open until ``idle_session_timeout`` ends it;
  then SIGCONT).

Right after the fault a terminal on another process books a slot; the clock stops when that
terminal holds the booking decided by a new home. So each figure is fault -> lease released
-> taken (retry every 0.25 s) -> calendar handed over (one record adopting the previous holder's
verdicts) -> the request decided -> forwarded to the terminal. With ``--reservations`` the
calendar holds that many decided bookings first (a takeover's cost used to grow with them).

Measure and print; nothing here is a pass/fail threshold. Example:
  python benchmarks/pg_failover_bench.py             # 20 faults (10 of each)
  python benchmarks/pg_failover_bench.py --quick     # a smoke run: one of each
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import signal
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

from system_bench import LoadClient, pct

from accord.engine.model import Status
from accord.relay.process import RelayProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres import running_server  # the tests' throwaway server

NOW = datetime(2026, 12, 1, 8, tzinfo=UTC)
DECIDED = (Status.BOOKED, Status.REJECTED)


def decided_by_other(client: LoadClient, reservation_id: str, deposed: str | None) -> bool:
    calendar = client.replica.calendar
    home = calendar.home
    return (home is not None and home != deposed and reservation_id in calendar.reservations
            and calendar.get(reservation_id).status in DECIDED)


async def book_and_wait(relay: RelayProcess, slot: int, deposed: str | None, timeout_s: float) -> tuple[float, str]:
    """Book on ``relay``; return (seconds until decided by a home other than ``deposed``, that home)."""
    client = await LoadClient(relay.url, f"desk-{slot}", calendar="clinic-1").start()
    try:
        started = time.perf_counter()
        start = NOW + timedelta(minutes=15 * slot)
        made = client.replica.calendar.book(resource="room-1", start=start, end=start + timedelta(minutes=15),
                                            patient="P-1", now=NOW)
        await client.push()
        await client.wait(lambda: decided_by_other(client, made.id, deposed), timeout_s)
        home = client.replica.calendar.home
        assert home is not None
        return time.perf_counter() - started, home
    finally:
        await client.stop()


async def seed(relay: RelayProcess, count: int) -> None:
    """``count`` booked reservations (one per resource), decided before the first fault: the
    history a new home must keep when it takes the calendar over."""
    client = await LoadClient(relay.url, "seeder", calendar="clinic-1").start()
    try:
        made = [client.replica.calendar.book(resource=f"seed-{i}", start=NOW, end=NOW + timedelta(minutes=15),
                                             patient="P-1", now=NOW).id for i in range(count)]
        await client.push()
        await client.wait(lambda: client.replica.calendar.home is not None and all(
            client.replica.calendar.get(r).status is Status.BOOKED for r in made[-1:]), 120)
    finally:
        await client.stop()


async def bench_failover(url: str, folder: Path, kills: int, reservations: int) -> str:
    relays = [RelayProcess(folder, f"pg-{n}", "--home", "clinic-*", db=url) for n in "abc"]
    await asyncio.gather(*(relay.start() for relay in relays))
    times: dict[str, list[float]] = {"SIGKILL": [], "SIGSTOP": []}
    try:
        _took, home = await book_and_wait(relays[0], 0, None, 30)
        if reservations:
            await seed(relays[0], reservations)
        for n in range(kills):
            holder = next(relay for relay in relays if relay.relay_id == home)
            other = next(relay for relay in relays if relay is not holder)
            sig = signal.SIGKILL if n % 2 == 0 else signal.SIGSTOP
            faulted = time.perf_counter()
            if sig == signal.SIGKILL:
                await holder.stop(sig)
            else:
                assert holder.proc is not None
                holder.proc.send_signal(sig)
            _took, home = await book_and_wait(other, n + 1, holder.relay_id, 30)
            times[sig.name].append(time.perf_counter() - faulted)
            print(f"  {sig.name} {holder.relay_id}: {times[sig.name][-1] * 1000:.0f} ms, new home {home}", flush=True)
            if sig == signal.SIGKILL:
                await holder.start()
            else:
                assert holder.proc is not None
                holder.proc.send_signal(signal.SIGCONT)
    finally:
        for relay in relays:
            if relay.proc is not None and relay.proc.poll() is None:
                relay.proc.send_signal(signal.SIGCONT)  # a frozen one would not see SIGTERM
            await relay.stop()
    lines = [f"failover: {kills} faults of the lease holder among 3 processes (lease 3 s, heartbeat 0.5 s, retry 0.25 s), "
             f"a calendar of {reservations + kills + 1} reservations"]
    for name, values in times.items():
        if values:
            ms = [v * 1000 for v in values]
            lines.append(f"  {name}: fault -> a booking decided by the new home: p50 {pct(ms, 0.5):.0f} ms, "
                         f"max {max(ms):.0f} ms, min {min(ms):.0f} ms ({len(ms)} faults)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, help="a postgresql:// URL of an empty database (default: a throwaway server)")
    parser.add_argument("--kills", type=int, default=20, help="faults, alternating SIGKILL and SIGSTOP (default 20)")
    parser.add_argument("--reservations", type=int, default=0,
                        help="decided reservations in the calendar before the first fault (default 0)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: one fault of each kind")
    parser.add_argument("--logs", type=Path, default=None, help="keep the relays' logs in this folder (default: a temporary one)")
    args = parser.parse_args(argv)
    if args.quick:
        args.kills = 2
    print(f"machine: {os.cpu_count()} cpus, {platform.platform()}, python {platform.python_version()}")
    with ExitStack() as stack:
        folder = args.logs or Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pg-failover-")))
        url = args.db
        if url is None:
            server = stack.enter_context(running_server(fsync=True))
            url = server.database()
            print(f"postgres: throwaway server from {server.binaries} (fsync on, synchronous_commit on)")
        print(asyncio.run(bench_failover(url, folder, args.kills, args.reservations)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
