"""Relay cluster on PostgreSQL: deliveries/s and CPU per delivery with 1, 2 and 3 relay processes.

The same load each time: ``--clients`` terminals (default 12) spread evenly over the processes,
all on one calendar, each editing its own reservation ``--rate`` times a second for
``--seconds`` (paced), then once more as fast as it can for ``--burst`` edits (tight loop). Every
client receives every other client's edits, so one edit makes ``clients - 1`` deliveries; some are
served by the writer's own process, the rest reach the others through the store's NOTIFY.

Printed per process count: deliveries/s (all deliveries over the time from the first edit until
every client holds every other client's last edit), the relays' CPU (user + system, summed over
the processes) per 1000 deliveries, and PostgreSQL's CPU beside it (its server processes, read
from /proc; the throwaway server only). On this 2-core VM the processes, PostgreSQL and the
clients share the two cores: more processes cannot add cores here, so read the CPU column (what a
delivery costs) more than deliveries/s.

Measure and print; nothing here is a pass/fail threshold. Example:
  python benchmarks/pg_scale_bench.py            # 12 clients, 50 edits/s each for 5 s, bursts of 200
  python benchmarks/pg_scale_bench.py --quick    # a smoke run
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import os
import platform
import sys
import tempfile
import time
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
from system_bench import LoadClient

from accord.relay.process import RelayProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres import running_server  # the tests' throwaway server

NOW = datetime(2026, 12, 1, 8, tzinfo=UTC)


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
        except psutil.NoSuchProcess:
            continue
        total += times.user + times.system
    return total


def postgres_pids(data_dir: str | None) -> list[int]:
    """The throwaway server's postmaster (its command line names its data folder) and its
    children now: the backends serving the relays, the WAL writer, the checkpointer."""
    if data_dir is None:
        return []
    for proc in psutil.process_iter(["cmdline"]):
        try:
            if data_dir in " ".join(proc.info["cmdline"] or ()):
                return [proc.pid, *(child.pid for child in proc.children(recursive=True))]
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return []


async def one_setting(url: str, folder: Path, processes: int, args: argparse.Namespace,
                      data_dir: str | None) -> list[str]:
    relays = [RelayProcess(folder, f"scale-{processes}-{i}", db=url) for i in range(processes)]
    await asyncio.gather(*(relay.start() for relay in relays))
    clients = [await LoadClient(relays[i % processes].url, f"desk-{i}", calendar=f"scale-{processes}").start()
               for i in range(args.clients)]
    lines = []
    try:
        mine = []
        for i, client in enumerate(clients):
            made = client.replica.calendar.book(resource=f"room-{i}", start=NOW, end=NOW + timedelta(minutes=30),
                                                patient=f"P-{i}", now=NOW)
            mine.append(made.id)
            await client.push()
        for client in clients:
            await client.wait(lambda c=client: all(rid in c.replica.calendar.reservations for rid in mine), 60)

        async def phase(label: str, edits: int, rate: float | None) -> str:
            relay_pids = [relay.pid for relay in relays]
            pg_pids = postgres_pids(data_dir)  # the backends serving these relays are up by now
            cpu0, pg0 = cpu_seconds(relay_pids), cpu_seconds(pg_pids)
            started = time.perf_counter()

            async def write(index: int) -> None:
                client, rid = clients[index], mine[index]
                for n in range(edits):
                    if rate is not None:
                        delay = started + n / rate - time.perf_counter()
                        if delay > 0:
                            await asyncio.sleep(delay)
                    client.replica.calendar.edit(rid, note=f"{label}{n}", now=NOW)
                    await client.push()

            await asyncio.gather(*(write(i) for i in range(len(clients))))
            last = f"{label}{edits - 1}"

            def holds_all(client: LoadClient) -> bool:
                entries = client.replica.calendar.reservations
                return all((entries.get(rid) or {}).get("note") == last for rid in mine)

            for client in clients:
                await client.wait(functools.partial(holds_all, client), 120)
            elapsed = time.perf_counter() - started
            deliveries = edits * len(clients) * (len(clients) - 1)
            relay_cpu, pg_cpu = cpu_seconds(relay_pids) - cpu0, cpu_seconds(pg_pids) - pg0
            pg = f"; PostgreSQL {pg_cpu * 1000 / deliveries * 1000:.1f} ms/1k" if pg_pids else ""
            return (f"  {label:5s} {processes} process{'es' if processes > 1 else '  '}: {deliveries:,} deliveries in "
                    f"{elapsed:.2f} s = {deliveries / elapsed:,.0f}/s; relays' CPU {relay_cpu:.2f} s = "
                    f"{relay_cpu * 1000 / deliveries * 1000:.1f} ms/1k deliveries{pg}")

        lines.append(await phase("paced", int(args.rate * args.seconds), args.rate))
        lines.append(await phase("burst", args.burst, None))
    finally:
        for client in clients:
            await client.stop()
        for relay in relays:
            await relay.stop()
    return lines


async def run(args: argparse.Namespace, url: str, folder: Path, data_dir: str | None) -> None:
    print(f"{args.clients} clients on one calendar, spread evenly; paced: {args.rate:g} edits/s each for "
          f"{args.seconds:g} s; burst: {args.burst} edits each, as fast as they go")
    for processes in args.processes:
        for line in await one_setting(url, folder, processes, args, data_dir):
            print(line, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--db", default=None, help="a postgresql:// URL of an empty database (default: a throwaway server)")
    parser.add_argument("--clients", type=int, default=12, help="terminals in all (default 12)")
    parser.add_argument("--rate", type=float, default=50.0, help="paced edits per second per client (default 50)")
    parser.add_argument("--seconds", type=float, default=5.0, help="how long the paced phase sends (default 5)")
    parser.add_argument("--burst", type=int, default=200, help="edits per client in the tight loop (default 200)")
    parser.add_argument("--processes", type=lambda t: [int(p) for p in t.split(",")], default=[1, 2, 3],
                        help="relay process counts to run, comma separated (default 1,2,3)")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 6 clients, 1 s paced at 20/s, bursts of 20")
    args = parser.parse_args(argv)
    if args.quick:
        args.clients, args.rate, args.seconds, args.burst = 6, 20.0, 1.0, 20
    print(f"machine: {os.cpu_count()} cpus, {platform.platform()}, python {platform.python_version()}")
    with ExitStack() as stack:
        folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="pg-scale-")))
        url, data_dir = args.db, None
        if url is None:
            server = stack.enter_context(running_server(fsync=True))
            url = server.database()
            data_dir = str(server.root / "data")
            print(f"postgres: throwaway server from {server.binaries} (fsync on, synchronous_commit on)")
        asyncio.run(run(args, url, folder, data_dir))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
