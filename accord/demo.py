"""``accord demo``: two relays and two terminals walk through the two-channel scenario.

Relay-1 (a hospital front desk's server, home of ``clinic-*`` calendars, so it decides bookings)
and relay-2 (a patient app platform's server) run as child processes, peered; terminal-1 syncs
with relay-1 and terminal-2 with relay-2. The demo books, reschedules across channels, takes
everyone offline for conflicting edits and a double booking, reconnects, and checks that all
four replicas converged. Exit 0 if they did, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from datetime import UTC, datetime
from pathlib import Path

from accord.engine.errors import ExitCode
from accord.relay.process import RelayProcess
from accord.terminal.client import Terminal
from accord.terminal.format import reservation_table
from accord.terminal.ids import short_id

CAL = "clinic-1"
DAY = datetime(2026, 12, 1, tzinfo=UTC)


def at(hour: int, minute: int = 0) -> datetime:
    return DAY.replace(hour=hour, minute=minute)


def say(text: str) -> None:
    print(text, flush=True)


@contextlib.asynccontextmanager
async def terminal(name: str, store: Path, relay: str | None) -> AsyncIterator[Terminal]:
    async with Terminal(relay=relay, store=store, name=name) as t:
        yield t


async def table(t: Terminal) -> str:
    items = await t.reservations(CAL)
    return reservation_table([(r, t.sync_state(CAL, r.id)) for r in items])


async def run(folder: Path) -> bool:
    relay1 = RelayProcess(folder, "relay-1", "--home", "clinic-*")
    await relay1.start()
    relay2 = RelayProcess(folder, "relay-2")
    await relay2.start("--peer", relay1.url)
    say(f"relay-1 (front desk, decides clinic-* bookings) at {relay1.url}")
    say(f"relay-2 (patient app platform, peered with relay-1) at {relay2.url}")
    store1, store2 = folder / "terminal-1.sqlite", folder / "terminal-2.sqlite"
    try:
        say("\n1. terminal-1 books room-1 at 09:00 through relay-1")
        async with terminal("desk-1", store1, relay1.url) as t1, terminal("app-2", store2, relay2.url) as t2:
            await t1.open(CAL)
            await t2.open(CAL)
            await t1.synced(timeout=10)  # terminals are provisioned online once: they learn who decides
            await t2.synced(timeout=10)
            first = await t1.book(CAL, resource="room-1", start=at(9), end=at(9, 30), patient="P-0042",
                                  service="check-up")
            say(f"   saved locally as {short_id(first.id)} ({first.status})")
            await t1.synced(timeout=10)
            say("   stored on relay-1 (durable acknowledgement received)")
            decided = await t1.decision(CAL, first.id, timeout=10)
            say(f"   relay-1 decided: {decided.status}")
            seen = await _wait_for(lambda: _has(t2, first.id), "terminal-2 sees the booking", t2)
            say(f"   terminal-2 sees it via relay-2: {seen}")

            say("\n2. terminal-2 reschedules it to 10:00 through relay-2")
            await t2.reschedule(CAL, first.id, start=at(10), end=at(10, 30))
            await t2.synced(timeout=10)
            await _wait_for(lambda: _start_of(t1, first.id) == at(10), "terminal-1 sees 10:00", t1)
            await t1.decision(CAL, first.id, timeout=10)
            await _wait_for(lambda: _booked_at(t1, first.id) == at(10), "relay-1 accepts 10:00", t1)
            say("   terminal-1 sees the new time, confirmed by relay-1: 10:00")

        say("\n3. everyone goes offline; relay-2 is also cut from relay-1")
        await relay2.stop()
        async with terminal("desk-1", store1, None) as t1, terminal("app-2", store2, None) as t2:
            await t1.edit(CAL, first.id, note="bring referral letter")
            say("   terminal-1 (offline) adds a note to the reservation")
            await t2.reschedule(CAL, first.id, start=at(11), end=at(11, 30))
            say("   terminal-2 (offline) moves it to 11:00")
            a = await t1.book(CAL, resource="room-2", start=at(14), end=at(14, 30), patient="P-0100")
            b = await t2.book(CAL, resource="room-2", start=at(14), end=at(14, 30), patient="P-0200")
            say(f"   both book room-2 at 14:00 offline: {short_id(a.id)} and {short_id(b.id)} (each shows {a.status})")
        say("\n4. relay-2 comes back alone; both terminals reconnect")
        await relay2.start()
        async with terminal("desk-1", store1, relay1.url) as t1, terminal("app-2", store2, relay2.url) as t2:
            await t1.synced(timeout=15)
            await t2.synced(timeout=15)
            say("   both terminals' changes are stored on their relays; relay-2 cannot reach the home yet:")
            say(f"   terminal-2 sees {short_id(b.id)} as {(await t2.get(CAL, b.id)).status}")
        say("\n5. the link between relay-1 and relay-2 heals")
        await relay2.stop()
        await relay2.start("--peer", relay1.url)
        async with terminal("desk-1", store1, relay1.url) as t1, terminal("app-2", store2, relay2.url) as t2:
            await t1.synced(timeout=15)
            await t2.synced(timeout=15)
            ids = [first.id, a.id, b.id]

            def converged() -> bool:
                return all(_has(t, i) for t in (t1, t2) for i in ids) and all(
                    _decided(t, i) for t in (t1, t2) for i in ids) and _same(t1, t2)

            ok = await _wait_for(converged, "convergence", t1, t2, timeout=20, quiet=True)
            for name, t in (("terminal-1", t1), ("terminal-2", t2)):
                say(f"\n{name} ({t.relay}):")
                say(await table(t))
            final = await t1.get(CAL, first.id)
            both = final.note == "bring referral letter" and final.start == at(11)
            room2 = sorted([str((await t1.get(CAL, a.id)).status), str((await t1.get(CAL, b.id)).status)])
            say(f"\nboth offline edits survived (note and 11:00): {'yes' if both else 'no'}")
            say(f"double booking of room-2 at 14:00 resolved: {' + '.join(room2)}")
            ok = ok and both and room2 == ["booked", "rejected"]
            say(f"converged: {'yes' if ok else 'no'}")
            return ok
    finally:
        await relay2.stop()
        await relay1.stop()


def _has(t: Terminal, rid: str) -> bool:
    return t.peek(CAL, rid) is not None


def _start_of(t: Terminal, rid: str) -> datetime | None:
    found = t.peek(CAL, rid)
    return found.start if found else None


def _booked_at(t: Terminal, rid: str) -> datetime | None:
    found = t.peek(CAL, rid)
    return found.booked.start if found and found.booked else None


def _decided(t: Terminal, rid: str) -> bool:
    found = t.peek(CAL, rid)
    return found is not None and found.status != "pending" and found.proposal != "pending"


def _same(t1: Terminal, t2: Terminal) -> bool:
    return t1.snapshot(CAL) == t2.snapshot(CAL)


async def _wait_for(check: Callable[[], bool], what: str, *terminals: Terminal, timeout: float = 10.0,
                    quiet: bool = False) -> bool:
    """Wait (without polling) until ``check`` holds on every change of the given terminals."""
    try:
        async with asyncio.timeout(timeout):
            while not check():
                waits = [asyncio.ensure_future(t.wait_for(check, timeout)) for t in terminals]
                _done, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                for task in pending:
                    task.cancel()
                await asyncio.gather(*waits, return_exceptions=True)
    except TimeoutError:
        if not quiet:
            raise TimeoutError(f"timed out waiting for {what}") from None
        return False
    return True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="accord demo",
        description="Start two peered relays and two terminals on free loopback ports (SQLite files in a fresh "
        "folder) and walk through booking, cross-channel reschedule, offline edits, a double booking and "
        "reconnection. Exits 0 if all replicas converge.",
    )
    parser.add_argument("--keep", action="store_true", help="keep the folder with the SQLite files and relay logs")
    args = parser.parse_args(argv)
    folder = Path(tempfile.mkdtemp(prefix="accord-demo-"))
    say(f"accord demo: files in {folder}")
    started = time.monotonic()
    try:
        ok = asyncio.run(run(folder))
    except (TimeoutError, RuntimeError) as exc:
        print(f"accord demo: {exc}", file=sys.stderr)
        ok = False
    finally:
        if not args.keep and not os.environ.get("ACCORD_DEMO_KEEP"):
            shutil.rmtree(folder, ignore_errors=True)
    say(f"({time.monotonic() - started:.1f} s)")
    return ExitCode.OK if ok else ExitCode.ERROR
