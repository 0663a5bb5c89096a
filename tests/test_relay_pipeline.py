"""The commit pipeline: readers feel back-pressure, the relay's own writes never fail on it."""

from __future__ import annotations

import asyncio

from wire import NOW

from accord.engine.model import CalendarId
from accord.engine.replica import Replica
from accord.engine.storage import MemoryStorage
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
