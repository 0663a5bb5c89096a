"""Home authority through real relays: only the recorded home decides, whoever relays what."""

from __future__ import annotations

import asyncio
import shutil
import urllib.request
from pathlib import Path

import pytest
from homes import decide
from relays import Relay, relay_config
from wire import WireClient, wait_for_any

from accord.engine.authority import RelayKey
from accord.engine.model import CalendarId, Decision, Status
from accord.engine.storage import MemoryStorage

CAL = "clinic-1"


async def http_get(relay: Relay, path: str) -> str:
    def fetch() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{relay.port}{path}", timeout=5) as response:
            return str(response.read().decode())

    return await asyncio.to_thread(fetch)


def decided(client: WireClient, *ids: str) -> bool:
    """True once the client knows the calendar's home and holds its decision on each of ``ids``."""
    calendar = client.replica(CAL).calendar
    return calendar.home is not None and all(
        i in calendar.reservations and calendar.get(i).status is not Status.PENDING for i in ids)


async def test_two_relays_started_as_home_for_one_calendar_agree_that_one_decides(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "r1", home_globs=["clinic-*"])) as r1, \
            Relay(relay_config(tmp_path, "r2", home_globs=["clinic-*"], peers=[r1.url])) as r2:
        async with WireClient(r1.url, actor="desk") as desk, WireClient(r2.url, actor="app") as app:
            await desk.open(CAL)
            await app.open(CAL)
            first = await desk.book(CAL, hour=9)
            second = await app.book(CAL, hour=9)  # the same slot, through the other "home"
            # A home takes a calendar with its first write: the relay whose first write comes
            # first takes it and the other sees its record and stands back; if both take it at
            # once (each deciding until it sees the other's record), the lower relay id wins.
            # Either way every replica ends naming the same one, and only its decisions count.
            def agreed() -> bool:
                homes = {c.replica(CAL).calendar.home for c in (desk, app)}
                return (len(homes) == 1 and all(decided(c, first, second) for c in (desk, app))
                        and all({c.replica(CAL).calendar.get(i).decided_by for i in (first, second)} == homes
                                for c in (desk, app)))
            await wait_for_any([desk, app], agreed, timeout=20)
            home = desk.replica(CAL).calendar.home
            assert home in ("r1", "r2")
            for client in (desk, app):
                calendar = client.replica(CAL).calendar
                assert calendar.home == home
                outcomes = sorted(str(calendar.get(i).status) for i in (first, second))
                assert outcomes == ["booked", "rejected"]
                assert {calendar.get(i).decided_by for i in (first, second)} == {home}
            deciding, other = (r1, r2) if home == "r1" else (r2, r1)
            await other.wait_for(lambda: 'accord_home_conflicts{calendar="clinic-1"} 1' in other.render_metrics())
            assert "warning: not home of clinic-1" in await http_get(other, "/healthz")
            assert "warning" not in await http_get(deciding, "/healthz")


async def test_a_peer_cannot_decide_and_cannot_write_decision_keys(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"])) as home, \
            Relay(relay_config(tmp_path, "other", peers=[home.url])) as other:
        async with WireClient(other.url, actor="app") as app, \
                WireClient(home.url, actor="rogue", role="peer") as rogue:
            await app.open(CAL)
            await rogue.open(CAL)
            await rogue.wait_synced(CAL)
            rid = await app.book(CAL, hour=9)
            victim = await app.book(CAL, hour=9)  # same slot: the home rejects one
            await app.wait_for(lambda: decided(app, rid, victim), timeout=20)
            loser = victim if app.replica(CAL).calendar.get(victim).status is Status.REJECTED else rid
            await rogue.wait_for(lambda: decided(rogue, loser))
            # A peer signs its own "booked" verdict for the loser: it is stored and relayed, and it is not a decision.
            decide(rogue.replica(CAL).calendar, loser, Decision.BOOKED, relay_id="home", key=RelayKey.generate())
            await rogue.push(CAL)
            marker = await app.book(CAL, resource="room-9")  # sent after the forgery reached the home
            await app.wait_for(lambda: decided(app, marker), timeout=20)
            for calendar in (app.replica(CAL).calendar, await home.calendar(CAL), await other.calendar(CAL)):
                assert calendar.get(loser).status is Status.REJECTED
            # The retired decision keys close even a peer's connection.
            rogue.replica(CAL).calendar.reservations[loser]["booked_start"] = "2026-12-01T09:00:00Z"
            await rogue.push(CAL)
            await rogue.wait_for(lambda: rogue.closed.is_set())
            assert rogue.close_code == 4403


async def test_a_home_restored_from_an_older_copy_takes_back_what_terminals_hold(tmp_path: Path) -> None:
    config = relay_config(tmp_path, "home", home_globs=["clinic-*"])
    async with Relay(config) as home:
        async with WireClient(home.url, actor="desk") as desk:
            await desk.open(CAL)
            early = await desk.book(CAL, hour=8)
            await desk.wait_for(lambda: decided(desk, early))
    backup = tmp_path / "backup.sqlite"
    shutil.copy(config.db_path, backup)  # a consistent copy of the stopped relay's store
    async with Relay(config) as home:
        async with WireClient(home.url, actor="desk") as desk:
            await desk.open(CAL)
            await desk.wait_synced(CAL)
            late = await desk.book(CAL, hour=10)
            await desk.wait_for(lambda: decided(desk, late))
            held = desk.replica(CAL)
            verdicts_held = dict(held.calendar.verdicts.items())
    for suffix in ("", "-wal", "-shm"):  # the disk is lost; the operator restores the backup
        Path(f"{config.db_path}{suffix}").unlink(missing_ok=True)
    shutil.copy(backup, config.db_path)
    async with Relay(config) as home:
        async with WireClient(home.url, actor="desk") as desk:
            desk.replicas[CAL] = held  # the terminal kept its data
            await desk.open(CAL)
            await desk.wait_synced(CAL)
            await home.wait_committed(CAL, held.state_vector())  # everything it held is back on the relay
            assert not desk.closed.is_set()  # re-pushing the home's own verdicts is not a forgery
            calendar = await home.calendar(CAL)
            assert set(verdicts_held) <= set(calendar.verdicts.keys())
            assert calendar.get(late).status is Status.BOOKED
            assert calendar.get(early).status is Status.BOOKED


class HeldDecisions(MemoryStorage):
    """A store that holds back every commit carrying a verdict until released."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.release.set()
        self.holding = asyncio.Event()

    async def append_many(self, items: list[tuple[CalendarId, bytes]], **kwargs: object) -> list[int]:
        if any(b"v1." in update for _calendar, update in items):
            self.holding.set()
            await self.release.wait()
        return await super().append_many(items, **kwargs)


async def test_the_home_stores_a_decision_before_anyone_can_see_it(tmp_path: Path) -> None:
    storage = HeldDecisions()
    async with Relay(relay_config(tmp_path, "home", home_globs=["clinic-*"]), storage=storage) as home:
        async with WireClient(home.url, actor="desk") as desk:
            await desk.open(CAL)
            first = await desk.book(CAL, hour=8)
            await desk.wait_for(lambda: decided(desk, first))
            storage.release.clear()
            storage.holding.clear()
            held = await desk.book(CAL, hour=9)
            async with asyncio.timeout(10):
                await storage.holding.wait()  # decided, and its commit is under way
            async with WireClient(home.url, actor="late") as late:  # a subscriber syncing right now
                await late.open(CAL)
                await late.wait_synced(CAL)
                assert late.replica(CAL).calendar.get(held).status is Status.PENDING
                assert desk.replica(CAL).calendar.get(held).status is Status.PENDING
                storage.release.set()
                await late.wait_for(lambda: decided(late, held))
                await desk.wait_for(lambda: decided(desk, held))
                assert late.replica(CAL).calendar.get(held).status is Status.BOOKED


async def test_a_calendar_handed_over_keeps_its_decisions_and_the_old_home_stops(tmp_path: Path,
                                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    from accord.relay.cli import main

    one = relay_config(tmp_path, "relay-1", home_globs=["clinic-*"])
    async with Relay(one) as relay_1, WireClient(relay_1.url, actor="desk") as desk:
        await desk.open(CAL)
        kept = await desk.book(CAL, hour=9)
        lost = await desk.book(CAL, hour=9)
        await desk.wait_for(lambda: decided(desk, kept, lost))
        before = {rid: desk.replica(CAL).calendar.get(rid).status for rid in (kept, lost)}
    two_db = tmp_path / "relay-2.sqlite"
    assert await asyncio.to_thread(main, ["key", "--db", str(two_db)]) == 0
    key = capsys.readouterr().out.strip()
    refused = ["handover", "--db", str(two_db), "--calendar", CAL, "--to", "relay-3", "--to-key", key]
    assert await asyncio.to_thread(main, refused) == 1  # relay-2 holds no record of being the home
    assert "no home recorded" in capsys.readouterr().err
    handover = ["handover", "--db", str(one.db_path), "--calendar", CAL, "--to", "relay-2", "--to-key", key]
    assert await asyncio.to_thread(main, handover) == 0
    assert "home is now relay-2 (epoch 2)" in capsys.readouterr().out
    async with Relay(relay_config(tmp_path, "relay-1", home_globs=["clinic-*"])) as relay_1, \
            Relay(relay_config(tmp_path, "relay-2", home_globs=["clinic-*"], peers=[relay_1.url])) as relay_2:
        async with WireClient(relay_1.url, actor="desk") as desk:
            await desk.open(CAL)
            late = await desk.book(CAL, hour=9)  # the slot the carried booking holds
            await desk.wait_for(lambda: decided(desk, late) and desk.replica(CAL).calendar.home == "relay-2", timeout=20)
            calendar = desk.replica(CAL).calendar
            await desk.wait_for(lambda: all(calendar.get(r).decided_by == "relay-2" for r in before))
            assert {rid: calendar.get(rid).status for rid in before} == before  # carried over, not re-decided
            assert calendar.get(late).status is Status.REJECTED  # the carried booking still holds its slot
            await relay_1.wait_for(lambda: 'accord_home_conflicts{calendar="clinic-1"} 1' in relay_1.render_metrics())
            assert "warning" not in await http_get(relay_2, "/healthz")
