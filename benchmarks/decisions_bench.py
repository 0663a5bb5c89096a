"""Decisions per second at a home relay, and the cost of the relay's update checks.

    .venv/bin/python benchmarks/decisions_bench.py            # 100k reservations on 100 resources
    .venv/bin/python benchmarks/decisions_bench.py --n 2000   # quick

Prints measurements only (no assertions). Each figure is given as wall time and as this
process's CPU time (``time.process_time``), which stays meaningful on a busy shared machine.
Steps:

1. a terminal writes N pending requests on 100 resources (a tenth of them collide with another);
2. the home relay loads them, starts a Decider and decides them all (start-up throughput);
3. with those N in the index, M new requests arrive one update at a time; each is applied and
   decided with ``decide_queued`` (steady-state throughput, per decision);
4. the relay's update checks: ``UpdatePolicy`` (the layout rules) built
   from the full state and from one with marks and edits (time, and the policy's memory), then microseconds per check of small
   updates, one after another as a relay gets them: a terminal's book, note edit and cancel, a
   verdict the home adds (as a peer relay checks it), a forged decision key and a forged
   overwrite of a reservation. ``UpdatePolicy`` figures are the check alone (``violations``,
   repeated, pre-check included) and the relay's whole path per update (check, then ``observe``
   of the change the document made; single shots, so a bit noisier).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from pycrdt import Map

from accord.engine.authority import RelayKey
from accord.engine.decisions import Decider
from accord.engine.model import format_time
from accord.engine.replica import Replica
from accord.engine.update_policy import UpdatePolicy

Built = TypeVar("Built")

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

    check_costs(home, terminal, n + m)
    return 0


def check_costs(home: Replica, terminal: Replica, reservations: int) -> None:
    """Step 4 (see the module docstring)."""
    full = home.full_state()
    print(f"full state of {reservations} reservations, each decided by the home (a signed verdict): {len(full) / 1e6:.1f} MB")
    policy = _timed_build("UpdatePolicy", lambda: UpdatePolicy.from_update(full))
    index = policy.index
    print(f"  UpdatePolicy holds {sum(len(r) for r in index.runs.values()):,} runs, {len(index.entry_keys):,} root entries, "
          f"{len(index.marks):,} marks: {_index_bytes(policy) / 2**20:.1f} MiB by sys.getsizeof")
    layout = verdict_layout_state(reservations)
    print(f"full state of {reservations} reservations with a verdict-sized string each, a tenth cancelled, "
          f"a tenth with an edited note: {len(layout) / 1e6:.1f} MB")
    other = _timed_build("UpdatePolicy", lambda: UpdatePolicy.from_update(layout))
    index = other.index
    print(f"  UpdatePolicy holds {sum(len(r) for r in index.runs.values()):,} runs, {len(index.entry_keys):,} root entries, "
          f"{len(index.marks):,} marks: {_index_bytes(other) / 2**20:.1f} MiB by sys.getsizeof")

    for change in home.take_changes():
        policy.observe(change.update)
    terminal.apply(home.diff(terminal.state_vector()))
    terminal.take_changes()
    rogue = Replica("bench", actor="rogue", client_id=99)
    rogue.apply(home.full_state())
    rogue.take_changes()
    # One sequence, as the relay gets it: every update is checked against the calendar as it is then.
    sequence: list[tuple[str, bytes, Callable[[], list[bytes]]]] = []
    ids = list(terminal.calendar.reservations.keys())
    verdicts = home.doc.get("verdicts", type=Map)
    count = min(100, len(ids) // 4)  # updates per kind; four kinds touch distinct reservations
    for k in range(count):
        start, end = format_time(BASE + k * SLOT), format_time(BASE + (k + 1) * SLOT)
        terminal.calendar.book(resource="room-x", start=start, end=end, patient="p", now=NOW)
        terminal.calendar.edit(ids[k], note=f"note {k}", now=NOW)
        terminal.calendar.cancel(ids[count + k], now=NOW)
        for name, change in zip(("book", "note edit", "cancel"), terminal.take_changes(), strict=True):
            sequence.append((name, change.update, _applier(home, change.update)))
        verdicts[f"{ids[k]}/q{k}/{'s' * 22}"] = "v1." + "p" * 300 + "." + "s" * 86  # a signed verdict's size
        (verdict,) = home.take_changes()
        sequence.append(("verdict add", verdict.update, _already_applied(verdict.update)))
        rogue.calendar.reservations[ids[2 * count + k]]["decision"] = "booked"
        rogue.calendar.reservations[ids[3 * count + k]] = Map({"resource": "room-9"})
        for name, change in zip(("forged decision", "forged overwrite"), rogue.take_changes(), strict=True):
            sequence.append((name, change.update, _applier(home, change.update)))  # applied anyway: the rogue goes on
    check: dict[str, list[float]] = {}
    path: dict[str, list[float]] = {}
    flagged: dict[str, set[bool]] = {}
    sizes: dict[str, list[int]] = {}
    for name, update, apply in sequence:
        started = time.process_time()
        for _ in range(20):
            policy._plain = None  # a cold check, not the check-then-observe cache
            found = policy.violations(update, first_only=True)
        check.setdefault(name, []).append((time.process_time() - started) / 20)
        flagged.setdefault(name, set()).add(bool(found))
        sizes.setdefault(name, []).append(len(update))
        policy._plain = None
        started_ns = time.perf_counter_ns()
        policy.violations(update, first_only=True)
        spent = time.perf_counter_ns() - started_ns
        for made in apply():
            started_ns = time.perf_counter_ns()
            policy.observe(made)
            spent += time.perf_counter_ns() - started_ns
        path.setdefault(name, []).append(spent / 1e9)
    print("per update, median µs: UpdatePolicy check (CPU) | check + observe (wall)")
    for name, per_update in check.items():
        print(f"  {name:17s} {statistics.mean(sizes[name]):4.0f} B  flagged={sorted(flagged[name])!s:7s} "
              f"{statistics.median(per_update) * 1e6:6.1f} | {statistics.median(path[name]) * 1e6:6.1f}")


def verdict_layout_state(n: int) -> bytes:
    """A calendar as the new layout holds it: N reservations, a verdict string per reservation
    (the size of a signed one) written by the home, a tenth cancelled and a tenth with a note edited."""
    terminal = Replica("bench", actor="desk", client_id=10)
    home = Replica("bench", actor="relay-a", client_id=1)
    for first in range(0, n, 1000):
        write_requests(terminal, first, min(1000, n - first))
    ids = list(terminal.calendar.reservations.keys())
    with terminal.doc.transaction(origin=terminal.calendar.origin):
        for k, rid in enumerate(ids):
            if k % 10 == 3:
                terminal.calendar.cancel(rid, now=NOW, reason="ill")
            elif k % 10 == 6:
                terminal.calendar.edit(rid, note="called", now=NOW)
    home.load([terminal.full_state()])
    verdicts = home.doc.get("verdicts", type=Map)
    with home.doc.transaction():
        for k, rid in enumerate(ids):
            verdicts[f"{rid}/q{k}/{'s' * 22}"] = "v1." + "p" * 300 + "." + "s" * 86
    return home.full_state()


def _already_applied(change: bytes) -> Callable[[], list[bytes]]:
    """For the home's own writes: the change is there already."""
    return lambda: [change]


def _applier(home: Replica, update: bytes) -> Callable[[], list[bytes]]:
    """Apply ``update`` to the home's document when called; the change it made, as a list."""

    def apply() -> list[bytes]:
        change = home.apply(update)
        home.take_changes()
        return [] if change is None else [change.update]

    return apply


def _timed_build(name: str, build: Callable[[], Built]) -> Built:
    started, cpu = time.perf_counter(), time.process_time()
    built = build()
    print(f"  {name}.from_update: {time.perf_counter() - started:.2f} s (CPU {time.process_time() - cpu:.2f} s)")
    return built


def _index_bytes(policy: UpdatePolicy) -> int:
    """What the policy's index holds, by sys.getsizeof (arrays count their buffers)."""
    index = policy.index
    total = sys.getsizeof(index.runs) + sys.getsizeof(index.seen) + sys.getsizeof(index.entry_roots)
    for runs in index.runs.values():
        total += sum(sys.getsizeof(part) for part in (runs, runs.starts, runs.ends, runs.codes, runs.deleted))
    total += sys.getsizeof(index.entry_keys) + sum(sys.getsizeof(key) for key in index.entry_keys)
    total += sum(sys.getsizeof(keys) for keys in index.keys.values())  # the key bytes are the entry_keys'
    total += sys.getsizeof(index.marks) + sum(sys.getsizeof(units) + sys.getsizeof(units[0]) * len(units)
                                              for units in index.marks.values())
    return total


if __name__ == "__main__":
    raise SystemExit(main())
