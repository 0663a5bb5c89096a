"""Per-calendar quotas, enforced at the relay for every writer: a write that would pass one is
refused with a reason naming the limit, counted, and the calendar stays as it was, pullable."""

from __future__ import annotations

from pathlib import Path

from relays import Relay, relay_config
from wire import NOW, WireClient

CAL = "clinic-1"


async def test_a_write_past_the_reservation_quota_is_refused_and_the_calendar_stays_pullable(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "r1", max_reservations=3)) as relay:
        async with WireClient(relay.url, actor="desk") as desk:
            await desk.open(CAL)
            await desk.wait_synced(CAL)
            for hour in (9, 10, 11):
                await desk.book(CAL, hour=hour)
            await desk.wait_acked(CAL)
            await desk.book(CAL, hour=12)  # the fourth
            await desk.wait_for(lambda: desk.closed.is_set())
            assert desk.close_code == 4403
        assert relay.metrics.updates_dropped["calendar_full"] == 1
        async with WireClient(relay.url, actor="reader") as reader:
            await reader.open(CAL)
            await reader.wait_synced(CAL)
            assert len(reader.replica(CAL).calendar.reservations) == 3
            # Editing what is there is still fine.
            rid = next(iter(reader.replica(CAL).calendar.reservations.keys()))
            reader.replica(CAL).calendar.edit(rid, note="still editable", now=NOW)
            await reader.push(CAL)
            await reader.wait_acked(CAL)
            assert not reader.closed.is_set()


async def test_a_write_past_the_calendar_size_quota_is_refused_with_a_reason(tmp_path: Path) -> None:
    async with Relay(relay_config(tmp_path, "r1", max_calendar_bytes=8_000)) as relay:
        async with WireClient(relay.url, actor="desk") as desk:
            await desk.open(CAL)
            await desk.wait_synced(CAL)
            calendar = desk.replica(CAL).calendar
            for minute in range(60):  # bounded: a booking takes ~300 bytes, so the quota is hit well before
                await desk.book(CAL, hour=9, minute=minute, note="n" * 100)
                await desk.wait_for(lambda: desk.closed.is_set() or desk.is_acked(CAL))
                if desk.closed.is_set():
                    break
            assert desk.close_code == 4403
            assert "--max-calendar-mb" in (desk.close_reason or "")
        assert relay.metrics.updates_dropped["calendar_bytes"] == 1
        assert len((await relay.calendar(CAL)).reservations) == len(calendar.reservations) - 1

