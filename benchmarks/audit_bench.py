"""What the audit trail costs a relay per client update.

    .venv/bin/python benchmarks/audit_bench.py            # 2000 reservations, 2000 edits
    .venv/bin/python benchmarks/audit_bench.py --n 500    # quick

Prints measurements only. CPU time (``time.process_time``) per update, so a busy shared machine
distorts it little. Steps, each without and with the audit (same updates, fresh relay replicas):

1. apply: the relay applies M terminal updates (note edits, then cancels) one at a time,
   and, with the audit, captures what each touched, writes its entry and merges it into the change;
2. store: the same changes appended to a SQLite store in batches of 1 and of 50, without and
   with their audit rows (``synchronous=OFF``: the audit's share, not the disk's fsync);
3. size: bytes an entry adds to the document (full state with entries minus without).
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

from accord.engine.audit import AuditRecord
from accord.engine.model import CalendarId
from accord.engine.replica import Replica
from accord.engine.storage import SqliteStorage
from accord.relay.audit import Audit
from accord.relay.auth import Grant, Role
from accord.relay.calendars import CalendarHandle

NOW = datetime(2026, 12, 1, 8, 0, tzinfo=UTC)
CAL = CalendarId("clinic-1")


def client_updates(n: int) -> tuple[bytes, list[bytes]]:
    """A calendar of ``n`` bookings (as one update) and ``2n`` terminal updates: a note edit and a cancel each."""
    desk = Replica(CAL, actor="desk-1")
    ids = []
    for i in range(n):
        start = NOW + timedelta(minutes=15 * i)
        ids.append(desk.calendar.book(resource=f"room-{i % 50}", start=start, end=start + timedelta(minutes=15),
                                      patient=f"P-{i}", now=NOW).id)
    base = desk.full_state()
    desk.take_changes()
    updates = []
    for rid in ids:
        desk.calendar.edit(rid, note="call back", now=NOW)
        updates += [c.update for c in desk.take_changes()]
    for rid in ids:
        desk.calendar.cancel(rid, now=NOW)
        updates += [c.update for c in desk.take_changes()]
    return base, updates


def run_apply(base: bytes, updates: list[bytes], audited: bool) -> tuple[float, Replica, list[bytes], list[list[AuditRecord]]]:
    replica = Replica(CAL, actor="relay")
    replica.load([base])
    handle = CalendarHandle(CAL, replica)
    audit = Audit("relay-1", storage=None, clock=lambda: NOW)  # type: ignore[arg-type]
    grant = Grant(Role.TERMINAL, ("*",), "desk-1")
    audit.watch(handle)
    rows: list[bytes] = []
    records: list[list[AuditRecord]] = []
    started = time.process_time()
    for update in updates:
        if audited:
            with audit.capture(handle, grant):
                change = replica.apply(update)
            assert change is not None
            change, _reply = audit.record(handle, grant, change)
            records.append(audit.take(handle))
        else:
            change = replica.apply(update)
            assert change is not None
        rows.append(change.update)
    return time.process_time() - started, replica, rows, records


async def run_store(rows: list[bytes], records: list[list[AuditRecord]], batch: int, audited: bool) -> float:
    with tempfile.TemporaryDirectory() as folder:
        store = await SqliteStorage.open(Path(folder) / "bench.sqlite", synchronous="OFF")
        try:
            started = time.process_time()
            for i in range(0, len(rows), batch):
                items = [(CAL, row) for row in rows[i:i + batch]]
                audit = [r for group in records[i:i + batch] for r in group] if audited else None
                await store.append_many(items, audit=audit)
            return time.process_time() - started
        finally:
            await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=2000, help="reservations (2n updates)")
    args = parser.parse_args()
    base, updates = client_updates(args.n)
    m = len(updates)
    plain_s, plain, plain_rows, _ = run_apply(base, updates, audited=False)
    audited_s, audited, rows, records = run_apply(base, updates, audited=True)
    print(f"{args.n} reservations, {m} terminal updates (note edits, then cancels)")
    print(f"apply per update:  plain {plain_s / m * 1e6:7.1f} us   audited {audited_s / m * 1e6:7.1f} us   "
          f"(+{(audited_s - plain_s) / m * 1e6:.1f} us)")
    for batch in (1, 50):
        without = asyncio.run(run_store(plain_rows, [], batch, audited=False))
        with_audit = asyncio.run(run_store(rows, records, batch, audited=True))
        print(f"store per update, batches of {batch:3d}: plain {without / m * 1e6:7.1f} us   "
              f"with audit rows {with_audit / m * 1e6:7.1f} us   (+{(with_audit - without) / m * 1e6:.1f} us)")
    grown = len(audited.full_state()) - len(plain.full_state())
    print(f"document size: +{grown} bytes for {m} entries = {grown / m:.0f} bytes per entry "
          f"(full state {len(plain.full_state())} -> {len(audited.full_state())} bytes)")
    print(f"row bytes per update: plain {sum(map(len, plain_rows)) / m:.0f}, with entry {sum(map(len, rows)) / m:.0f}")


if __name__ == "__main__":
    main()
