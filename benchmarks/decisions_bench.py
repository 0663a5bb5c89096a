"""Decisions per second at a home relay, and the cost of the relay's protected-key check.

    .venv/bin/python benchmarks/decisions_bench.py            # 100k reservations on 100 resources
    .venv/bin/python benchmarks/decisions_bench.py --n 2000   # quick

Prints measurements only (no assertions). Each figure is given as wall time and as this
process's CPU time (``time.process_time``), which stays meaningful on a busy shared machine.
Steps:

1. a terminal writes N pending requests on 100 resources (a tenth of them collide with another);
2. the home relay loads them, starts a Decider and decides them all (start-up throughput);
3. with those N in the index, M new requests arrive one update at a time; each is applied and
   decided with ``decide_queued`` (steady-state throughput, per decision);
4. ``KeyIndex``: build from the full state, then microseconds per ``writes_protected`` check of
   small terminal updates (book, note edit, cancel) and of a forged decision overwrite.
"""

from __future__ import annotations

import argparse
import statistics
import time
from datetime import UTC, datetime, timedelta

from accord.engine.authority import RelayKey
from accord.engine.decisions import Decider
from accord.engine.model import format_time
from accord.engine.replica import Replica
from accord.engine.update_keys import KeyIndex

HOME_KEY = RelayKey.generate()  # the home relay's signing key

NOW = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
BASE = datetime(2026, 12, 1, 0, 0, tzinfo=UTC)
RESOURCES = 100
SLOT = timedelta(minutes=30)


def slot(resource_index: int, k: int) -> tuple[str, str, str]:
    """The k-th half hour of a resource; every tenth request asks for the previous one again."""
    if k % 10 == 9:
        k -= 1
    start = BASE + k * SLOT
    return f"room-{resource_index}", format_time(start), format_time(start + SLOT)


def write_requests(terminal: Replica, first: int, count: int) -> None:
    calendar = terminal.calendar
    with terminal.doc.transaction(origin=calendar.origin):
        for i in range(first, first + count):
            resource, start, end = slot(i % RESOURCES, i // RESOURCES)
            calendar.book(resource=resource, start=start, end=end, patient=f"patient {i}", now=NOW + timedelta(seconds=i))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=100_000, help="reservations already in the calendar (default 100000)")
    parser.add_argument("--m", type=int, default=2000, help="requests decided one by one afterwards (default 2000)")
    args = parser.parse_args(argv)
    n, m = args.n, args.m

    terminal = Replica("bench", actor="desk", client_id=10)
    home = Replica("bench", actor="relay-a", client_id=1)
    started = time.perf_counter()
    for first in range(0, n, 1000):
        write_requests(terminal, first, min(1000, n - first))
    print(f"wrote {n} requests on {RESOURCES} resources: {time.perf_counter() - started:.2f} s")
    terminal.take_changes()

    started = time.perf_counter()
    home.load([terminal.full_state()])
    print(f"home relay loaded them: {time.perf_counter() - started:.2f} s")

    started, cpu = time.perf_counter(), time.process_time()
    decider = Decider(home.calendar, "relay-a", HOME_KEY)
    made = decider.decide_all_pending(NOW)
    elapsed, elapsed_cpu = time.perf_counter() - started, time.process_time() - cpu
    booked = sum(1 for d in made if d.outcome == "booked")
    print(
        f"start-up: decide_all_pending of {len(made)} ({booked} booked, {len(made) - booked} rejected): "
        f"{elapsed:.2f} s = {len(made) / elapsed:,.0f} decisions/s (CPU {elapsed_cpu:.2f} s = "
        f"{len(made) / elapsed_cpu:,.0f}/s)"
    )
    terminal.apply(home.diff(terminal.state_vector()))
    terminal.take_changes()
    home.take_changes()

    # Steady state: one request per update, applied then decided, as the relay does.
    updates = []
    for i in range(n, n + m):
        resource, start, end = slot(i % RESOURCES, i // RESOURCES)
        terminal.calendar.book(resource=resource, start=start, end=end, patient=f"patient {i}", now=NOW)
        updates.extend(change.update for change in terminal.take_changes())
    apply_s = decide_s = 0.0
    decide_cpu: list[float] = []
    apply_cpu: list[float] = []
    decided = 0
    for update in updates:
        t0, c0 = time.perf_counter(), time.process_time()
        home.apply(update)
        t1, c1 = time.perf_counter(), time.process_time()
        decided += len(decider.decide_queued(NOW))
        t2, c2 = time.perf_counter(), time.process_time()
        apply_s += t1 - t0
        decide_s += t2 - t1
        apply_cpu.append(c1 - c0)
        decide_cpu.append(c2 - c1)
    decide_median = statistics.median(decide_cpu)
    print(
        f"steady state with {n} in the index: {decided} decisions, decide_queued {decide_s / decided * 1e6:.0f} µs each "
        f"= {decided / decide_s:,.0f} decisions/s; with apply_update {decided / (apply_s + decide_s):,.0f}/s\n"
        f"  CPU median per request: decide_queued {decide_median * 1e6:.0f} µs = {1 / decide_median:,.0f} decisions/s, "
        f"apply_update {statistics.median(apply_cpu) * 1e6:.0f} µs"
    )

    full = home.full_state()
    started, cpu = time.perf_counter(), time.process_time()
    index = KeyIndex.from_update(full)
    print(
        f"KeyIndex.from_update(full state of {n + m} reservations, {len(full) / 1e6:.1f} MB): "
        f"{time.perf_counter() - started:.2f} s (CPU {time.process_time() - cpu:.2f} s)"
    )
    for change in home.take_changes():
        index.observe(change.update)
    terminal.apply(home.diff(terminal.state_vector()))
    terminal.take_changes()
    samples: dict[str, list[bytes]] = {"book": [], "note edit": [], "cancel": [], "forged decision": []}
    ids = [r for r in list(terminal.calendar.reservations.keys())[:200]]
    for k, rid in enumerate(ids[:100]):
        terminal.calendar.book(resource="room-x", start=format_time(BASE + k * SLOT), end=format_time(BASE + (k + 1) * SLOT),
                               patient="p", now=NOW)
        samples["book"] += [c.update for c in terminal.take_changes()]
        terminal.calendar.edit(rid, note=f"note {k}", now=NOW)
        samples["note edit"] += [c.update for c in terminal.take_changes()]
    for rid in ids[100:200]:
        terminal.calendar.cancel(rid, now=NOW)
        samples["cancel"] += [c.update for c in terminal.take_changes()]
        terminal.calendar.reservations[rid]["decision"] = "booked"
        samples["forged decision"] += [c.update for c in terminal.take_changes()]
    for name, updates in samples.items():
        per_update = []
        for update in updates:
            t0 = time.process_time()
            for _ in range(20):
                index._last = None  # measure a cold check, not the one-entry cache
                flagged = index.writes_protected(update)
            per_update.append((time.process_time() - t0) / 20)
        size = statistics.mean(len(u) for u in updates)
        print(
            f"writes_protected, {name} ({size:.0f} B, flagged={flagged}): "
            f"median {statistics.median(per_update) * 1e6:.1f} µs CPU per update"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
