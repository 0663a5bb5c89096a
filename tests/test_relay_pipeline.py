"""The commit pipeline: readers feel back-pressure, the relay's own writes never fail on it."""

from __future__ import annotations

import asyncio

from wire import NOW

from accord.engine.model import CalendarId
from accord.engine.replica import Replica
from accord.engine.storage import CompactionPolicy, MemoryStorage
from accord.relay.calendars import CalendarHandle
from accord.relay.metrics import Metrics
from accord.relay.pipeline import CommitPipeline


async def test_own_writes_are_queued_past_the_reader_limit_and_all_stored() -> None:
    storage = MemoryStorage()
    pipeline = CommitPipeline(storage, Metrics(), max_queue=2)
    handle = CalendarHandle(CalendarId("clinic-1"), Replica("clinic-1", actor="relay"))
    for hour in range(9, 14):  # five decisions-like writes made while the pipeline is busy
        handle.replica.calendar.book(resource="room-1", start=NOW.replace(hour=hour),
                                     end=NOW.replace(hour=hour, minute=30), patient="p", now=NOW)
    pipeline.submit_local(handle)  # more than max_queue: must not raise
    pipeline.start()
    async with asyncio.timeout(5):
        await pipeline.drain()
    assert (await storage.log_length(CalendarId("clinic-1")))[0] == 5
    await pipeline.close()


async def test_a_reader_waits_while_the_queue_is_full() -> None:
    pipeline = CommitPipeline(MemoryStorage(), Metrics(), max_queue=1)
    handle = CalendarHandle(CalendarId("clinic-1"), Replica("clinic-1", actor="relay"))
    await pipeline.submit(handle, None, None)
    second = asyncio.create_task(pipeline.submit(handle, None, None))
    for _ in range(20):  # give it every chance to run
        await asyncio.sleep(0)
    assert not second.done()  # back-pressure: the pipeline has not taken the first item yet
    pipeline.start()
    async with asyncio.timeout(5):
        await second
        await pipeline.drain()
    await pipeline.close()


async def test_a_large_calendar_is_compacted_once_its_log_grew_by_its_snapshot() -> None:
    """Not every ``max_rows`` updates whatever its size: that re-encoded a big calendar each time."""
    name = CalendarId("clinic-1")
    storage = MemoryStorage()
    pipeline = CommitPipeline(storage, Metrics(), compaction=CompactionPolicy(max_rows=5))
    handle = CalendarHandle(name, Replica("clinic-1", actor="relay"))
    calendar = handle.replica.calendar
    pipeline.start()
    try:
        ids = []
        for i in range(40):
            ids.append(calendar.book(resource=f"room-{i}", start=NOW, end=NOW.replace(minute=30), patient="p",
                                     now=NOW).id)
            pipeline.submit_local(handle)
        async with asyncio.timeout(5):
            await pipeline.drain()
        assert (await storage.log_length(name))[0] == 1  # small rows then: compacted at max_rows
        snapshot = handle.snapshot_bytes
        assert snapshot == handle.log_bytes > 40 * 100
        edits = 0
        while True:  # small edits: many more rows than max_rows before their bytes reach the snapshot's
            grown = handle.log_bytes - snapshot
            calendar.edit(ids[edits % 40], note=f"n{edits}", now=NOW)
            pipeline.submit_local(handle)
            edits += 1
            async with asyncio.timeout(5):
                await pipeline.drain()
            if (await storage.log_length(name))[0] == 1:
                break
            assert (await storage.log_length(name))[0] == edits + 1 and edits < 10_000
        assert edits > 50 and grown >= 0.9 * snapshot  # compacted once the log had grown by the snapshot
        reader = Replica("clinic-1", actor="reader")
        reader.load(await storage.load(name))
        assert reader.calendar.get(ids[(edits - 1) % 40]).note == f"n{edits - 1}"
        assert len(reader.calendar.reservations) == 40
    finally:
        await pipeline.close()


def test_the_compaction_policy_weighs_rows_and_bytes() -> None:
    policy = CompactionPolicy(max_rows=1000)
    assert policy.should_compact(1001) and not policy.should_compact(1000)  # a terminal's store: rows only
    assert not policy.should_compact(1001, log_bytes=4_300_000, snapshot_bytes=4_000_000)
    assert policy.should_compact(1001, log_bytes=8_000_000, snapshot_bytes=4_000_000)
    assert not policy.should_compact(999, log_bytes=10**9, snapshot_bytes=0)
