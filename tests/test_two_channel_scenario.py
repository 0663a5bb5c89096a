"""The core use case, end to end: two channels, each with its own relay and terminal.

1. Terminal-1 books on relay-1; relay-1 shares it with relay-2.
2. Terminal-2 gets it from relay-2 and reschedules it; terminal-1 sees the new time.
3. Both terminals lose their relays and the relays lose each other; terminal-1 edits the note,
   terminal-2 the time, both book new reservations; then everything reconnects. All four
   replicas end identical, both edits survive, no booking is lost.

Once through the Python API (relays in process) and once through the CLI, every terminal
command and every relay a separate process. There the test waits for changes to reach a
terminal by reading an ``accord terminal watch --json`` on it, under a deadline.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import pytest
from relays import Relay, relay_config
from wire import WireClient

from accord.engine.model import Status
from accord.relay.process import RelayProcess
from accord.terminal.client import Terminal
from accord.terminal.link import Backoff

CAL = "clinic-1"
FAST = Backoff(initial_s=0.05, max_s=0.2)
pytestmark = pytest.mark.slow


def at(hour: int, minute: int = 0) -> datetime:
    return datetime(2026, 12, 1, hour, minute, tzinfo=UTC)


async def relay_state(url: str) -> dict[str, object]:
    """The calendar as a relay holds it (read through a fresh protocol client)."""
    async with WireClient(url, actor="auditor") as client:
        await client.open(CAL)
        await client.wait_synced(CAL)
        return client.replica(CAL).calendar.to_py()


async def test_two_channel_scenario_through_the_python_api(tmp_path: Path) -> None:
    r1_config = relay_config(tmp_path, "relay-1")
    r1 = await Relay(r1_config).__aenter__()
    r2_config = relay_config(tmp_path, "relay-2", peers=[r1.url])
    r2 = await Relay(r2_config).__aenter__()
    url1, url2 = r1.url, r2.url
    store1, store2 = tmp_path / "terminal-1.sqlite", tmp_path / "terminal-2.sqlite"
    try:
        # 1 and 2: book on channel 1, reschedule on channel 2, the change flows back.
        async with Terminal(relay=url1, store=store1, name="desk-1", backoff=FAST) as t1, \
                Terminal(relay=url2, store=store2, name="app-2", backoff=FAST) as t2:
            first = await t1.book(CAL, resource="room-1", start=at(9), end=at(9, 30), patient="P-0042")
            await t1.synced(timeout=10)
            await t2.open(CAL)
            await t2.wait_for(lambda: t2.peek(CAL, first.id), timeout=10)
            await t2.reschedule(CAL, first.id, start=at(10), end=at(10, 30))
            await t2.synced(timeout=10)
            moved = await t1.wait_for(lambda: (r := t1.peek(CAL, first.id)) and r.start == at(10) and r, timeout=10)
            assert moved.start == at(10) and moved.updated_by == "app-2"

        # 3: everyone offline, the relays cut from each other (both stopped).
        await r2.__aexit__(None, None, None)
        await r1.__aexit__(None, None, None)
        async with Terminal(relay=url1, store=store1, name="desk-1", backoff=FAST) as t1, \
                Terminal(relay=url2, store=store2, name="app-2", backoff=FAST) as t2:
            await t1.edit(CAL, first.id, note="bring referral letter")
            await t2.reschedule(CAL, first.id, start=at(11), end=at(11, 30))
            a = await t1.book(CAL, resource="room-2", start=at(14), end=at(14, 30), patient="P-0100")
            b = await t2.book(CAL, resource="room-3", start=at(15), end=at(15, 30), patient="P-0200")
            assert t1.status().pending > 0 and t2.status().pending > 0

            # Everything reconnects: relay-1 first, relay-2 (and its link) a little later.
            r1_config.port, r2_config.port = int(url1.rsplit(":", 1)[1]), int(url2.rsplit(":", 1)[1])
            r1 = await Relay(r1_config).__aenter__()
            await t1.synced(timeout=15)
            r2 = await Relay(r2_config).__aenter__()
            await t2.synced(timeout=15)
            ids = {first.id, a.id, b.id}

            def converged() -> bool:
                s1, s2 = t1.snapshot(CAL), t2.snapshot(CAL)
                return s1 == s2 and ids <= set(s1.get("reservations", {}))  # type: ignore[arg-type]

            await t1.wait_for(converged, timeout=15)
            await t2.wait_for(converged, timeout=15)
            final = await t1.get(CAL, first.id)
            assert (final.note, final.start) == ("bring referral letter", at(11))  # both offline edits survive
            for rid in ids:
                assert (await t2.get(CAL, rid)).status is Status.BOOKED
            expected = t1.snapshot(CAL)
        assert await relay_state(url1) == expected
        assert await relay_state(url2) == expected
    finally:
        await r2.__aexit__(None, None, None)
        await r1.__aexit__(None, None, None)


async def cli(store: Path, relay: str, *args: str) -> tuple[int, str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "accord", "terminal", *args, "--store", str(store), "--relay", relay,
        "--calendar", CAL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=env)
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


Seen = dict[str, dict[str, object]]  # reservation id -> the reservation as the watch last printed it


class Watch:
    """``accord terminal watch --json`` on one terminal, in its own process: the event the test
    waits on is a change line on its stdout, under a deadline."""

    def __init__(self, store: Path, relay: str) -> None:
        self.store, self.relay = store, relay
        self.proc: asyncio.subprocess.Process | None = None
        self.seen: Seen = {}

    async def start(self) -> Watch:
        """Start the watch and wait for its first note ("connected ..." or "... unreachable ...;
        retrying"): it handles SIGINT from then on, and prints every change that arrives later."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("ACCORD_")}
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "accord", "terminal", "watch", "--json", "--store", str(self.store),
            "--relay", self.relay, "--calendar", CAL, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            env=env)
        assert self.proc.stderr is not None
        async with asyncio.timeout(60):
            line = await self.proc.stderr.readline()
        assert line.startswith(b'{"note"'), f"the watch on {self.store.name} said: {line!r}"
        return self

    async def until(self, done: Callable[[Seen], bool], timeout_s: float = 60) -> Seen:
        """Read change lines until ``done(seen)`` holds; fail at the deadline or if the watch ends."""
        assert self.proc is not None and self.proc.stdout is not None
        try:
            async with asyncio.timeout(timeout_s):
                while not done(self.seen):
                    line = await self.proc.stdout.readline()
                    assert line, f"the watch on {self.store.name} ended; it saw {self.seen}"
                    change = json.loads(line)
                    if change["reservation"] is not None:
                        self.seen[change["id"]] = change["reservation"]
        except TimeoutError:
            raise AssertionError(f"the watch on {self.store.name} saw no such change in {timeout_s:g} s; "
                                 f"it saw {self.seen}") from None
        return self.seen

    async def stop(self) -> None:
        """Ctrl-C: the watch exits 130."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)
        async with asyncio.timeout(60):
            _, err = await self.proc.communicate()
        assert self.proc.returncode == 130, err.decode()

    async def kill(self) -> None:
        """For ``finally`` blocks: end the watch if it still runs."""
        if self.proc is not None and self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()


def starts_at(rid: str, start: str) -> Callable[[Seen], bool]:
    return lambda seen: rid in seen and seen[rid]["start"] == start


async def test_two_channel_scenario_through_the_cli_in_separate_processes(tmp_path: Path) -> None:
    r1 = await RelayProcess(tmp_path, "relay-1").start()
    r2 = await RelayProcess(tmp_path, "relay-2", "--peer", r1.url).start()
    s1, s2 = tmp_path / "terminal-1.sqlite", tmp_path / "terminal-2.sqlite"
    watches: list[Watch] = []
    try:
        # Terminal-2 watches relay-2 while terminal-1 books on relay-1.
        watches.append(watch2 := await Watch(s2, r2.url).start())
        code, out, err = await cli(s1, r1.url, "book", "--as", "desk-1", "--resource", "room-1",
                                   "--start", "2099-12-01T09:00Z", "--end", "2099-12-01T09:30Z", "--patient", "P-0042")
        assert code == 0, err
        rid = out.strip()
        await watch2.until(lambda seen: rid in seen)  # relay-1 shared it with relay-2
        await watch2.stop()
        code, out, err = await cli(s2, r2.url, "show", rid, "--json")
        assert code == 0, err

        # Terminal-1 watches relay-1 while terminal-2 reschedules on relay-2.
        watches.append(watch1 := await Watch(s1, r1.url).start())
        code, _, err = await cli(s2, r2.url, "reschedule", rid, "--as", "app-2",
                                 "--start", "2099-12-01T10:00Z", "--end", "2099-12-01T10:30Z")
        assert code == 0, err
        await watch1.until(starts_at(rid, "2099-12-01T10:00:00Z"))
        await watch1.stop()
        code, out, err = await cli(s1, r1.url, "show", rid, "--json")
        assert code == 0 and json.loads(out)["start"] == "2099-12-01T10:00:00Z", (out, err)

        # Offline: both relays down (so the terminals and the relays are all cut off).
        assert await r2.stop(signal.SIGTERM) == 0
        assert await r1.stop(signal.SIGTERM) == 0
        code, _, err = await cli(s1, r1.url, "edit", rid, "--note", "bring referral letter", "--as", "desk-1")
        assert code == 0 and "saved locally" in err, err
        code, _, err = await cli(s2, r2.url, "reschedule", rid, "--start", "2099-12-01T11:00Z",
                                 "--end", "2099-12-01T11:30Z", "--as", "app-2")
        assert code == 0, err
        code, a, err = await cli(s1, r1.url, "book", "--resource", "room-2", "--start", "2099-12-01T14:00Z",
                                 "--end", "2099-12-01T14:30Z", "--patient", "P-0100")
        assert code == 0, err
        code, b, err = await cli(s2, r2.url, "book", "--resource", "room-3", "--start", "2099-12-01T15:00Z",
                                 "--end", "2099-12-01T15:30Z", "--patient", "P-0200")
        assert code == 0, err
        a, b = a.strip(), b.strip()
        code, _, _ = await cli(s1, r1.url, "sync", "--timeout", "1")
        assert code == 3  # relay unreachable

        # Both terminals watch (and retry) while the relays are down; then the relays come back.
        # Each watch sends its terminal's offline changes and prints the other's as they arrive
        # through the relays' peer link.
        watches += [watch1 := await Watch(s1, r1.url).start(), watch2 := await Watch(s2, r2.url).start()]
        await r1.start()
        await r2.start()
        await watch1.until(lambda seen: b in seen and starts_at(rid, "2099-12-01T11:00:00Z")(seen))
        await watch2.until(lambda seen: a in seen and rid in seen and seen[rid]["note"] == "bring referral letter")
        await watch1.stop()
        await watch2.stop()
        listings = []
        for store, url in ((s1, r1.url), (s2, r2.url)):
            code, out, err = await cli(store, url, "list", "--json")
            assert code == 0, err
            listings.append({r["id"]: r for r in json.loads(out)["reservations"]})
        one, two = ({k: {f: v for f, v in r.items() if f != "sync"} for k, r in listing.items()} for listing in listings)
        assert one == two  # identical listings (how far each terminal's own changes got may differ)
        assert set(one) == {rid, a, b}  # no booking lost
        assert (one[rid]["start"], one[rid]["note"]) == ("2099-12-01T11:00:00Z", "bring referral letter")
        assert {r["status"] for r in one.values()} == {"booked"}
    finally:
        for watch in watches:
            await watch.kill()
        r2.cleanup()
        r1.cleanup()
