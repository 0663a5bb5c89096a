"""What a relay acknowledged survives SIGKILL; SIGTERM shuts down gracefully with 1001;
idle calendars leave memory but not the store."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from relays import Relay, RelayProcess, relay_config
from wire import WireClient

CAL = "clinic-1"
pytestmark = pytest.mark.slow


@pytest.mark.parametrize("db", ["sqlite", "postgres"])
async def test_acknowledged_updates_survive_sigkill(tmp_path: Path, db: str, request: pytest.FixtureRequest) -> None:
    relay = await RelayProcess(tmp_path, "a", db=request.getfixturevalue("postgres_url") if db == "postgres" else None).start()
    try:
        async with WireClient(relay.url) as client:
            await client.open(CAL)
            ids = [await client.book(CAL, resource=f"room-{i}") for i in range(50)]
            await client.wait_acked(CAL)
            await relay.kill(signal.SIGKILL)
        await relay.start()
        async with WireClient(relay.url) as reader:
            await reader.open(CAL)
            await reader.wait_synced(CAL)
            assert set(ids) <= set(reader.replica(CAL).calendar.reservations.keys())
    finally:
        relay.cleanup()


async def test_sigterm_closes_clients_with_1001_and_keeps_data(tmp_path: Path) -> None:
    relay = await RelayProcess(tmp_path, "a").start()
    try:
        async with WireClient(relay.url) as client:
            await client.open(CAL)
            rid = await client.book(CAL)
            await client.wait_acked(CAL)
            assert await relay.kill(signal.SIGTERM) == 0
            await client.wait_for(lambda: client.closed.is_set())
            assert client.close_code == 1001
        await relay.start()
        async with WireClient(relay.url) as reader:
            await reader.open(CAL)
            await reader.wait_for(lambda: rid in reader.replica(CAL).calendar.reservations)
    finally:
        relay.cleanup()


async def test_peer_killed_and_restarted_converges(tmp_path: Path) -> None:
    """Partition by SIGKILL: edits continue on a; b comes back and catches up; b's own edits flow back."""
    async with Relay(relay_config(tmp_path, "a")) as a:
        b = await RelayProcess(tmp_path, "b", "--peer", a.url).start()
        try:
            async with WireClient(a.url, actor="ta") as ta:
                await ta.open(CAL)
                first = await ta.book(CAL)
                async with WireClient(b.url, actor="tb") as tb:
                    await tb.open(CAL)
                    await tb.wait_for(lambda: first in tb.replica(CAL).calendar.reservations)
                await b.kill(signal.SIGKILL)
                during = [await ta.book(CAL, resource="room-2", hour=h) for h in range(8, 12)]
                await ta.wait_acked(CAL)
                await b.start()
                async with WireClient(b.url, actor="tb2") as tb2:
                    await tb2.open(CAL)
                    await tb2.wait_for(lambda: all(i in tb2.replica(CAL).calendar.reservations for i in during))
                    back = await tb2.book(CAL, resource="room-3")
                    await ta.wait_for(lambda: back in ta.replica(CAL).calendar.reservations)
        finally:
            b.cleanup()


async def test_idle_calendar_is_unloaded_and_reloaded_from_store(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "a", idle_unload_s=0.2)) as relay:
        async with WireClient(relay.url) as client:
            await client.open(CAL)
            rid = await client.book(CAL)
            await client.wait_acked(CAL)
        await relay.wait_for(lambda: CAL not in relay.calendars.loaded, 5)
        async with WireClient(relay.url) as again:
            await again.open(CAL)
            await again.wait_for(lambda: rid in again.replica(CAL).calendar.reservations)


async def test_a_corrupt_row_refuses_its_calendar_only_and_nothing_is_deleted(tmp_path: Path) -> None:
    import sqlite3

    config = relay_config(tmp_path, "a")
    async with Relay(config) as relay:
        async with WireClient(relay.url) as client:
            for calendar in ("clinic-1", "clinic-2"):
                await client.open(calendar)
                await client.book(calendar)
                await client.wait_acked(calendar)
            kept = await client.book("clinic-2", hour=10)
            await client.wait_acked("clinic-2")
    db = sqlite3.connect(config.db_path)
    with db:
        db.execute("UPDATE updates SET data = zeroblob(length(data)) WHERE calendar = 'clinic-1'")
    rows_before = db.execute("SELECT count(*) FROM updates").fetchone()[0]
    db.close()
    async with Relay(relay_config(tmp_path, "a")) as relay:
        async with WireClient(relay.url, calendar="clinic-1") as damaged:
            await damaged.wait_for(lambda: damaged.closed.is_set())
            assert damaged.close_code == 1011
        async with WireClient(relay.url) as client:
            await client.open("clinic-2")
            await client.wait_for(lambda: kept in client.replica("clinic-2").calendar.reservations)
        health = relay.render_metrics()
        assert "accord_calendars_loaded 1" in health
    db = sqlite3.connect(config.db_path)
    assert db.execute("SELECT count(*) FROM updates").fetchone()[0] == rows_before  # nothing "repaired" away
    db.close()
