"""Relay cluster on PostgreSQL: cross-process latency, and the store's append rate.

Starts a throwaway PostgreSQL server (fsync on: durable settings; tests/postgres.py) unless
``--db`` names one, then:

1. **Appends**: ``--appends`` Yjs updates of ~300 bytes from 100 concurrent tasks into one
   :class:`PostgresStorage` (group commit, synchronous_commit=on): rows/s and commits.
2. **Fan-out**: three ``accord relay`` processes on the database. A writer terminal on relay A
   edits one reservation ``--rate`` times a second for ``--seconds``; reader terminals on A, B
   and C note when each edit's frame reaches their socket (the edit's note names its index, the
   driver keeps its send time), and again once applied. The latency covers client -> A ->
   admission -> commit (ACK after PostgreSQL's commit) -> NOTIFY -> B/C -> forward -> client: what
   a desk on another process of the cluster waits. The hop itself is each edit's arrival at B's
   (C's) terminal minus its arrival at A's, which A sends right after its commit. Also printed:
   the writer's ACK (every tenth edit), how many of A's commits took over 25 ms (flush stalls of
   the disk, which every process's edits wait for), how many notices carried their rows (B and C
   then run no query), and the CPU each relay and this driver spent per edit, with the load
   average: the machine is shared, and a run that did not get its CPU says so.

The writer's edits are made by the terminal's own model before the clock starts, so that sending
one costs the driver a socket write: the driver runs on the relays' machine, where real terminals
would not (making each edit at send time cost it 0.2 ms of CPU per edit more, and the relays the
CPU it took).

Measure and print; nothing here is a pass/fail threshold. Example:
  python benchmarks/pg_fanout_bench.py            # 1000 updates/s for 10 s
  python benchmarks/pg_fanout_bench.py --quick    # a smoke run

Measured on the idle 2-core VM, six default runs (README, "A relay cluster on PostgreSQL"): a
terminal on B or C p50 1.2-2.1 ms, p99 3.6-7.2 ms in five runs, 179-185 ms in the sixth, which had
a 260 ms flush stall of the disk; the hop itself p50 0.0 ms, p99 0.7-1.3 ms (14-21 ms in the
stalled run, catching up). Appends: 23-36k rows/s.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import sys
import tempfile
import time
import urllib.request
from collections import deque
from contextlib import ExitStack
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import pycrdt
from system_bench import LoadClient, pct
from websockets.exceptions import ConnectionClosed

from accord.engine.errors import CloseCode
from accord.engine.model import CalendarId
from accord.engine.session import Acknowledged, CalendarRequested, UpdateReceived
from accord.engine.storage.postgres import PostgresStorage
from accord.relay.process import RelayProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres import running_server  # the tests' throwaway server

NOW = datetime(2026, 12, 1, 8, tzinfo=UTC)
MARK = re.compile(rb"edit-(\d{9})")  # a timed edit's note: its index, as a Yjs string in the frame


def yjs_updates(count: int) -> list[bytes]:
    """``count`` distinct Yjs updates of about 300 bytes (the store reads each one's state-vector
    span: random bytes would cost it a failed parse each, nothing a relay ever stores)."""
    doc = pycrdt.Doc()
    entries = doc.get("entries", type=pycrdt.Map)
    updates: list[bytes] = []
    doc.observe(lambda event: updates.append(event.update))
    for i in range(count):
        entries[f"e{i}"] = "x" * 280
    return updates


async def bench_appends(url: str, count: int) -> str:
    store = await PostgresStorage.open(url)
    try:
        per_task = max(1, count // 100)
        updates = yjs_updates(per_task * 100)
        started = time.perf_counter()

        async def writer(worker: int) -> None:
            for i in range(per_task):
                await store.append(CalendarId(f"append-{worker % 10}"), updates[worker * per_task + i])

        await asyncio.gather(*(writer(w) for w in range(100)))
        elapsed = time.perf_counter() - started
        rows = per_task * 100
        return (f"appends: {rows} Yjs updates of ~300 B from 100 tasks in {elapsed:.2f} s = {rows / elapsed:,.0f} rows/s "
                f"({store.stats.commits} commits, {rows / max(1, store.stats.commits):.0f} rows/commit)")
    finally:
        await store.close()


class Reader(LoadClient):
    """A terminal-like client that notes when each timed edit's frame reaches its socket (the
    edit's note names its index in :attr:`sent`, the send times), before it applies it to its
    replica: what is timed is the cluster, not this driver's own work on earlier frames."""

    def __init__(self, url: str, name: str, sent: list[int]) -> None:
        super().__init__(url, name)
        self.sent = sent  # perf_counter_ns at which edit i was sent (the writer fills it)
        self.arrived: list[float] = []  # ms from send to this client's socket
        self.applied_ms: list[float] = []  # the same, once applied to the replica
        self.last_seen = -1  # the highest edit index seen
        self.arrival_ns: dict[int, int] = {}  # edit index -> perf_counter_ns when its frame reached this socket
        self.awaiting_ack: deque[tuple[int, float]] = deque()  # (own clock, perf_counter at send), oldest first
        self.ack_ms: list[float] = []  # ms from send to the relay's ACK (it stored the edit)

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                now = time.perf_counter_ns()
                seen = [int(m.group(1)) for m in MARK.finditer(message)]
                self.session.receive(message)
                while (event := self.session.next_event()) is not None:
                    if isinstance(event, CalendarRequested):
                        self.session.refuse(event.calendar, CloseCode.NOT_FOUND, "not open on this client")
                    elif isinstance(event, UpdateReceived):
                        self.replica.apply(event.update)
                    elif isinstance(event, Acknowledged):
                        self.acked = event.clocks
                        mine = event.clocks.get(self.replica.doc.client_id, 0)
                        while self.awaiting_ack and self.awaiting_ack[0][0] <= mine:
                            self.ack_ms.append((time.perf_counter() - self.awaiting_ack.popleft()[1]) * 1000)
                done = time.perf_counter_ns()
                timed = [self.sent[i] for i in seen if i < len(self.sent)]
                self.arrival_ns.update((i, now) for i in seen)
                self.arrived += [(now - t) / 1e6 for t in timed]
                self.applied_ms += [(done - t) / 1e6 for t in timed]
                if seen:
                    self.last_seen = max(self.last_seen, *seen)
                await self._flush()
                self.changed.set()
        except ConnectionClosed:
            pass


def relay_metric(relay: RelayProcess, name: str) -> float:
    """One unlabelled value of a relay's /metrics (0 if absent)."""
    with urllib.request.urlopen(relay.url.replace("ws://", "http://") + "/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
    return 0.0


async def bench_fanout(url: str, folder: Path, rate: int, seconds: float) -> str:
    relays = [RelayProcess(folder, name, db=url) for name in ("pg-a", "pg-b", "pg-c")]
    await asyncio.gather(*(relay.start() for relay in relays))
    total = int(rate * seconds)
    sent: list[int] = []
    writer = await Reader(relays[0].url, "writer", sent).start()
    readers = [await Reader(relay.url, f"reader-{tag}", sent).start() for tag, relay in zip("abc", relays, strict=True)]
    try:
        made = writer.replica.calendar.book(resource="room-1", start=NOW, end=NOW + timedelta(minutes=30),
                                            patient="P-1", now=NOW)
        await writer.push()
        for client in readers:
            await client.wait(lambda client=client: made.id in client.replica.calendar.reservations, 20)
        # The edits are made (by the terminal's own model) before the clock starts, so that sending
        # one costs this driver a socket write: its CPU is the relays' CPU on this machine.
        me = writer.replica.doc.client_id
        frames: list[tuple[bytes, int]] = []
        for i in range(total):
            writer.replica.calendar.edit(made.id, note=f"edit-{i:09d}", now=NOW)
            [change] = writer.replica.take_changes()
            frames.append((writer.session.update(writer.calendar, change.update), writer.replica.clocks().get(me, 0)))
        interval = 1.0 / rate
        processes = [psutil.Process(relay.pid) for relay in relays] + [psutil.Process()]
        cpu_before = [cpu_seconds(process) for process in processes]
        assert writer.ws is not None
        started = time.perf_counter()
        for i, (frame, clock) in enumerate(frames):
            due = started + i * interval
            delay = due - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            sent.append(time.perf_counter_ns())
            await writer.ws.send(frame)
            if i % 10 == 0:  # every tenth: the ACK (durable in PostgreSQL) back at the writer
                writer.awaiting_ack.append((clock, sent[-1] / 1e9))
        send_s = time.perf_counter() - started
        for client in readers:  # a reader that lagged behind a compaction gets the snapshot: the last note only
            await client.wait(lambda client=client: client.last_seen == total - 1 or (
                client.replica.calendar.reservations.get(made.id) or {}).get("note") == f"edit-{total - 1:09d}", 60)
        await writer.wait(lambda: not writer.awaiting_ack, 60)
        cpu_ms = [(cpu_seconds(process) - before) * 1000 / total for process, before in zip(processes, cpu_before, strict=True)]
        carried = [relay_metric(relay, "accord_cluster_notices_carried_total") for relay in relays[1:]]
        notices = [relay_metric(relay, "accord_cluster_notices_total") for relay in relays[1:]]
        slow = relay_metric(relays[0], "accord_store_commit_seconds_count") - relay_bucket(relays[0], "0.025")
    finally:
        for client in [writer, *readers]:
            await client.stop()
        for relay in relays:
            await relay.stop()
    lines = [f"fan-out: {total} edits at {total / send_s:,.0f}/s offered ({rate}/s asked) from a terminal on relay A",
             f"  writer's ACK (stored in PostgreSQL, every 10th edit): p50 {pct(writer.ack_ms, 0.5):.2f} ms, "
             f"p99 {pct(writer.ack_ms, 0.99):.2f} ms"]
    for tag, client in zip("abc", readers, strict=True):
        ms = client.arrived
        where = "same process (baseline: commit + forward)" if tag == "a" else "cross-process"
        lines.append(f"  {where} latency A -> {tag.upper()}: p50 {pct(ms, 0.5):.2f} ms, p99 {pct(ms, 0.99):.2f} ms, "
                     f"max {max(ms):.2f} ms; applied by the terminal p50 {pct(client.applied_ms, 0.5):.2f} ms, "
                     f"p99 {pct(client.applied_ms, 0.99):.2f} ms ({len(ms)} of {total} edits)")
    local = readers[0].arrival_ns
    for tag, client in zip("bc", readers[1:], strict=True):
        hop = [(at - local[i]) / 1e6 for i, at in client.arrival_ns.items() if i in local]
        lines.append(f"  the hop itself, A's subscriber -> {tag.upper()}'s (per edit, the arrival at {tag.upper()}'s "
                     f"terminal minus at A's, which follows A's commit): p50 {pct(hop, 0.5):.2f} ms, p99 {pct(hop, 0.99):.2f} ms")
    lines.append(f"  commits on A over 25 ms (the disk's flush stalls: every process's edits wait for them): {slow:.0f}")
    lines.append(f"  notices whose rows B and C took from the notice itself: {sum(carried):.0f} of {sum(notices):.0f}")
    lines.append("  CPU per edit: relay A {:.2f} ms, B {:.2f} ms, C {:.2f} ms, this driver (4 clients) {:.2f} ms; "
                 "load average {:.1f} at the end".format(*cpu_ms, os.getloadavg()[0]))
    return "\n".join(lines)


def relay_bucket(relay: RelayProcess, le: str) -> float:
    """Commits on ``relay`` that took at most ``le`` seconds (its commit-latency histogram)."""
    return relay_metric(relay, f'accord_store_commit_seconds_bucket{{le="{le}"}}')


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


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
