"""System benchmarks: peering latency, partition catch-up, terminal catch-up, relay memory, and
the latency from a terminal's booking to the home relay's decision arriving back at it.

    .venv/bin/python benchmarks/system_bench.py           # full sizes (a few minutes)
    .venv/bin/python benchmarks/system_bench.py --quick   # smoke sizes (well under a minute)

Measures and prints; asserts nothing. Relays run as ``accord relay`` child processes with
durable SQLite stores in a temporary folder; load clients live in this process and speak the
multiplexed protocol directly (engine ``Session`` + ``Replica``), the terminal figures use
the real ``Terminal``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import tempfile
import time
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psutil
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from accord import __version__
from accord.engine.errors import CloseCode
from accord.engine.model import CalendarId
from accord.engine.protocol import covers
from accord.engine.replica import Replica
from accord.engine.session import ROLE_HEADER, SYNC_PATH, Acknowledged, CalendarRequested, Session, UpdateReceived
from accord.relay.process import RelayProcess
from accord.terminal.client import Terminal

CAL = "bench-1"
NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)


class LoadClient:
    """A terminal-like protocol client without a store: one connection, one calendar."""

    def __init__(self, url: str, name: str, on_update: Callable[[LoadClient], None] | None = None,
                 calendar: str = CAL) -> None:
        self.url, self.name, self.calendar = url, name, calendar
        self.session = Session(self)
        self.replica = Replica(calendar, actor=name)
        self.acked: dict[int, int] = {}
        self.on_update = on_update
        self.ws: ClientConnection | None = None
        self.reader: asyncio.Task[None] | None = None
        self.changed = asyncio.Event()

    def state_vector(self, calendar: CalendarId) -> bytes:  # Documents, for the session
        return self.replica.state_vector()

    def diff(self, calendar: CalendarId, state_vector: bytes) -> bytes:
        return self.replica.diff(state_vector)

    async def start(self) -> LoadClient:
        self.ws = await connect(self.url + SYNC_PATH, additional_headers={ROLE_HEADER: "terminal"},
                                max_size=None, compression=None)
        self.reader = asyncio.create_task(self._read())
        self.session.open(self.calendar)
        await self._flush()
        return self

    async def _flush(self) -> None:
        assert self.ws is not None
        for data in self.session.data_to_send():
            await self.ws.send(data)

    async def stop(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.reader is not None:
            self.reader.cancel()
            await asyncio.gather(self.reader, return_exceptions=True)

    async def push(self) -> None:
        assert self.ws is not None
        for change in self.replica.take_changes():
            await self.ws.send(self.session.update(self.calendar, change.update))

    async def wait(self, condition: Callable[[], bool], timeout_s: float) -> None:
        async with asyncio.timeout(timeout_s):
            while not condition():
                self.changed.clear()
                await self.changed.wait()

    def own_acked(self) -> bool:
        me = self.replica.doc.client_id
        return covers(self.acked, {me: self.replica.clocks().get(me, 0)})

    async def _read(self) -> None:
        assert self.ws is not None
        try:
            async for message in self.ws:
                assert isinstance(message, bytes)
                self.session.receive(message)
                while (event := self.session.next_event()) is not None:
                    if isinstance(event, CalendarRequested):
                        self.session.refuse(event.calendar, CloseCode.NOT_FOUND, "not open on this client")
                    elif isinstance(event, UpdateReceived):
                        if self.replica.apply(event.update) is not None and self.on_update is not None:
                            self.on_update(self)
                    elif isinstance(event, Acknowledged):
                        self.acked = event.clocks
                await self._flush()
                self.changed.set()
        except ConnectionClosed:
            pass


def metrics(relay: RelayProcess) -> dict[str, float]:
    url = relay.url.replace("ws://", "http://") + "/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        out = {}
        for line in response.read().decode().splitlines():
            if line and not line.startswith("#") and "{" not in line:
                name, value = line.split()
                out[name] = float(value)
        return out


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else float("nan")


def book_many(replica: Replica, n: int, seed: int = 1) -> list[str]:
    rng = random.Random(seed)
    ids = []
    for i in range(n):
        start = NOW + timedelta(days=i // 400, minutes=15 * (i % 40))
        ids.append(replica.calendar.book(resource=f"room-{rng.randrange(10)}", start=start,
                                         end=start + timedelta(minutes=15), patient=f"P-{i:06d}",
                                         service="general practice", note="first visit", now=NOW).id)
    return ids


async def seed_calendar(url: str, n: int) -> tuple[LoadClient, list[str]]:
    """A client that books ``n`` reservations and waits until the relay stored them."""
    client = await LoadClient(url, "seeder").start()
    ids = book_many(client.replica, n)
    await client.push()
    await client.wait(client.own_acked, 120)
    return client, ids


# ---- 1. peering latency ------------------------------------------------------------------------


async def bench_peering(folder: Path, relays_in_chain: int, clients_per_end: int, rate_per_s: float,
                        duration_s: float) -> None:
    relays = [await RelayProcess(folder, f"chain{relays_in_chain}-0").start()]
    for i in range(1, relays_in_chain):
        relays.append(await RelayProcess(folder, f"chain{relays_in_chain}-{i}", "--peer", relays[-1].url).start())
    sent: dict[str, float] = {}
    latencies: list[float] = []

    def watch(client: LoadClient) -> None:
        """Time each note change as it integrates (observer: only the reservations that changed)."""
        reservations = client.replica.calendar.reservations

        def changed(events: list[Any]) -> None:
            now = time.perf_counter()
            for event in events:
                if len(event.path) != 1:
                    continue
                stamp = reservations[event.path[0]].get("note")
                if stamp in sent:
                    latencies.append(now - sent[stamp])

        reservations.observe_deep(changed)

    try:
        seeder, ids = await seed_calendar(relays[0].url, 50)
        writers = [await LoadClient(relays[0].url, f"w{i}").start() for i in range(clients_per_end)]
        readers = [await LoadClient(relays[-1].url, f"r{i}").start() for i in range(clients_per_end)]
        for reader in readers:
            watch(reader)
        for c in writers + readers:
            await c.wait(lambda c=c: all(i in c.replica.calendar.reservations for i in ids), 60)
        interval = 1.0 / rate_per_s
        count = int(rate_per_s * duration_s)
        started = time.perf_counter()
        for k in range(count):
            writer = writers[k % len(writers)]
            rid = ids[k % len(ids)]
            stamp = f"w{k}"
            writer.replica.calendar.edit(rid, note=stamp, now=NOW)
            sent[stamp] = time.perf_counter()
            await writer.push()
            delay = started + (k + 1) * interval - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
        deadline = time.perf_counter() + 10
        while len(latencies) < count * len(readers) and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
        ms = [x * 1000 for x in latencies]
        print(f"peering chain of {relays_in_chain}, {clients_per_end} clients per end, {rate_per_s:.0f} writes/s: "
              f"end-to-end p50 {pct(ms, 0.5):.1f} ms, p99 {pct(ms, 0.99):.1f} ms "
              f"({len(ms)} of {count * len(readers)} deliveries timed)")
        for c in [seeder, *writers, *readers]:
            await c.stop()
    finally:
        for relay in relays:
            await relay.stop()


# ---- 2. catch-up after a partition ---------------------------------------------------------------


async def bench_partition(folder: Path, reservations: int, missed: int) -> None:
    a = await RelayProcess(folder, "part-a").start()
    b = await RelayProcess(folder, "part-b", "--peer", a.url).start()
    try:
        seeder, ids = await seed_calendar(a.url, reservations)
        watcher = await LoadClient(b.url, "watcher").start()
        await watcher.wait(lambda: len(watcher.replica.calendar.reservations) == reservations, 120)
        await watcher.stop()
        await b.stop()
        rng = random.Random(7)
        for k in range(missed):
            seeder.replica.calendar.edit(rng.choice(ids), note=f"missed {k}", now=NOW)
        await seeder.push()
        await seeder.wait(seeder.own_acked, 120)
        full_state = len(seeder.replica.full_state())
        await seeder.stop()
        before = metrics(a)["accord_bytes_out_total"]
        started = time.perf_counter()
        await b.start()
        expected = seeder.replica.calendar.to_py()
        watcher = await LoadClient(b.url, "watcher2").start()
        await watcher.wait(lambda: watcher.replica.calendar.to_py() == expected, 120)
        elapsed = time.perf_counter() - started
        link_bytes = metrics(a)["accord_bytes_out_total"] - before
        print(f"partition catch-up: {missed} missed updates on a {reservations}-reservation calendar: "
              f"{elapsed:.2f} s until a client of the healed relay has everything; link bytes {link_bytes:,.0f} "
              f"= {100 * link_bytes / full_state:.1f}% of the full state ({full_state:,} bytes)")
        await watcher.stop()
    finally:
        await b.stop()
        await a.stop()


# ---- 3. terminal catch-up ---------------------------------------------------------------------------


async def bench_terminal(folder: Path, bookings: int) -> None:
    relay = await RelayProcess(folder, "term").start()
    try:
        store = folder / "terminal.sqlite"
        started = time.perf_counter()
        async with Terminal(relay=None, store=store, name="desk") as t:
            for i in range(bookings):
                start = NOW + timedelta(days=i // 40, minutes=15 * (i % 40))
                await t.book(CAL, resource=f"room-{i % 10}", start=start, end=start + timedelta(minutes=15),
                             patient=f"P-{i:06d}", note="offline")
        offline_s = time.perf_counter() - started
        before = metrics(relay)["accord_bytes_in_total"]
        started = time.perf_counter()
        async with Terminal(relay=relay.url, store=store, name="desk") as t:
            await t.synced(timeout=300)
            elapsed = time.perf_counter() - started
        link_bytes = metrics(relay)["accord_bytes_in_total"] - before
        watcher = await LoadClient(relay.url, "w").start()
        await watcher.wait(lambda: len(watcher.replica.calendar.reservations) == bookings, 120)
        full_state = len(watcher.replica.full_state())
        await watcher.stop()
        print(f"terminal catch-up: {bookings} bookings made offline ({bookings / offline_s:,.0f} durable local "
              f"writes/s); after reconnect {elapsed:.2f} s until the relay acknowledged all; bytes sent "
              f"{link_bytes:,.0f} vs full state {full_state:,} ({link_bytes / full_state:.2f}x)")
    finally:
        await relay.stop()


# ---- 4. memory -------------------------------------------------------------------------------------


async def bench_memory(folder: Path, calendars: int, per_calendar: int) -> None:
    relay = await RelayProcess(folder, "mem", "--idle-unload", "3").start()
    try:
        process = psutil.Process(relay.pid)
        base = process.memory_info().rss
        clients = [LoadClient(relay.url, f"c{c}", calendar=f"bench-{c}") for c in range(calendars)]
        for index, client in enumerate(clients):
            book_many(client.replica, per_calendar, seed=index)
            await client.start()
            await client.push()
            await client.wait(client.own_acked, 120)
        loaded = process.memory_info().rss
        for client in clients:
            await client.stop()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and metrics(relay)["accord_calendars_loaded"] > 0:
            await asyncio.sleep(0.5)
        idle = process.memory_info().rss
        left = metrics(relay)["accord_calendars_loaded"]
        mib = 1024 * 1024
        print(f"memory: relay RSS {base / mib:.0f} MiB at start, {loaded / mib:.0f} MiB with {calendars} calendars x "
              f"{per_calendar} reservations loaded ({(loaded - base) / (calendars * per_calendar) / 1024:.1f} KiB per "
              f"reservation), {idle / mib:.0f} MiB after they went idle and unloaded ({left:.0f} still loaded)")
    finally:
        await relay.stop()


# ---- 5. decision latency -----------------------------------------------------------------------------


async def bench_decisions(folder: Path, bookings: int) -> None:
    home = await RelayProcess(folder, "home", "--home", "bench-*").start()
    other = await RelayProcess(folder, "other", "--peer", home.url).start()
    try:
        async with Terminal(relay=other.url, store=folder / "decider-terminal.sqlite", name="app") as t:
            await t.open(CAL)
            await t.synced(timeout=30)
            warm = await t.book(CAL, resource="room-0", start=NOW, end=NOW + timedelta(minutes=5), patient="P-warm")
            await t.decision(CAL, warm.id, timeout=30)
            latencies = []
            outcomes: dict[str, int] = {}
            for i in range(bookings):
                start = NOW + timedelta(hours=1, minutes=5 * (i // 2))  # every second request collides
                began = time.perf_counter()
                made = await t.book(CAL, resource="room-1", start=start, end=start + timedelta(minutes=5),
                                    patient=f"P-{i}")
                decided = await t.decision(CAL, made.id, timeout=30)
                latencies.append((time.perf_counter() - began) * 1000)
                outcomes[str(decided.status)] = outcomes.get(str(decided.status), 0) + 1
        print(f"decision latency, terminal -> relay -> home relay -> back, {bookings} sequential bookings: "
              f"p50 {pct(latencies, 0.5):.1f} ms, p99 {pct(latencies, 0.99):.1f} ms, mean "
              f"{statistics.fmean(latencies):.1f} ms ({outcomes})")
    finally:
        await other.stop()
        await home.stop()


PARTS = {
    "peering": (lambda f: bench_peering(f, 2, 3, 50, 1),
                lambda f: _both(bench_peering(f, 2, 20, 100, 5), bench_peering(f, 3, 20, 100, 5))),
    "partition": (lambda f: bench_partition(f, 500, 100), lambda f: bench_partition(f, 10_000, 10_000)),
    "terminal": (lambda f: bench_terminal(f, 200), lambda f: bench_terminal(f, 10_000)),
    "memory": (lambda f: bench_memory(f, 5, 100), lambda f: bench_memory(f, 100, 1000)),
    "decisions": (lambda f: bench_decisions(f, 20), lambda f: bench_decisions(f, 200)),
}


async def _both(first: Any, second: Any) -> None:
    await first
    await second


async def main_async(quick: bool, only: str | None = None) -> None:
    print(f"machine: {os.cpu_count()} cpus, {platform.platform()}, python {platform.python_version()}, "
          f"accord {__version__}; relays are child processes with durable SQLite (synchronous=FULL)")
    with tempfile.TemporaryDirectory(prefix="accord-bench-") as tmp:
        folder = Path(tmp)
        for name, (small, full) in PARTS.items():
            if only is None or only == name:
                await (small if quick else full)(folder)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke sizes")
    parser.add_argument("--only", choices=sorted(PARTS), help="run one part")
    args = parser.parse_args()
    asyncio.run(main_async(args.quick, args.only))


if __name__ == "__main__":
    main()
