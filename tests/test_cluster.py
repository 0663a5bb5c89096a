"""A cluster of relay processes sharing one PostgreSQL database: what one process's clients
write reaches every other process's clients (terminals and stock Yjs clients), bookings are
decided by the one home process, a lost LISTEN connection catches up, and a SIGKILLed process
loses nothing it acknowledged."""

from __future__ import annotations

import signal
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from relays import Relay, RelayProcess, relay_config, running
from test_interop_yjs import NodeEnv, node_env, run_yclient
from wire import NOW, WireClient

from accord.engine.backoff import Backoff
from accord.engine.model import CalendarId
from accord.engine.replica import Replica
from accord.engine.storage import open_storage

CAL = "clinic-1"
__all__ = ["node_env"]  # the fixture, imported for the stock Yjs test


def status(client: WireClient, reservation_id: str) -> str | None:
    entry = client.replica(CAL).calendar.reservations.get(reservation_id)
    return None if entry is None else str(client.replica(CAL).calendar.get(reservation_id).status)


@pytest.fixture
async def cluster(tmp_path: Path, postgres_url: str) -> AsyncIterator[list[RelayProcess]]:
    """Three ``accord relay`` processes on one database; the first is home of clinic-*."""
    async with running([RelayProcess(tmp_path, "pg-a", "--home", "clinic-*", db=postgres_url),
                        RelayProcess(tmp_path, "pg-b", db=postgres_url),
                        RelayProcess(tmp_path, "pg-c", db=postgres_url)]) as relays:
        yield relays


@pytest.mark.slow
async def test_terminals_on_different_processes_see_each_others_bookings_decided_once(
        cluster: list[RelayProcess]) -> None:
    a, b, c = cluster
    async with WireClient(a.url, actor="desk-a") as ta, WireClient(b.url, actor="desk-b") as tb, \
            WireClient(c.url, actor="desk-c") as tc:
        for client in (ta, tb, tc):
            await client.open(CAL)
            await client.wait_synced(CAL)
        await ta.book(CAL, resource="room-a")  # a first write on the home's process: it takes the calendar
        for client in (tb, tc):
            await client.wait_for(lambda client=client: client.replica(CAL).calendar.home == "pg-a")
        from_b = [await tb.book(CAL, resource="room-b", hour=8 + i % 8, minute=15 * (i // 8)) for i in range(12)]
        from_c = [await tc.book(CAL, resource="room-c", hour=8 + i % 8, minute=15 * (i // 8)) for i in range(12)]
        # One slot, asked for from two processes at once: the home (on a) books exactly one.
        clash = [await tb.book(CAL, resource="room-x", hour=12), await tc.book(CAL, resource="room-x", hour=12)]
        everything = [*from_b, *from_c]
        for client in (ta, tb, tc):
            await client.wait_for(lambda client=client: all(status(client, r) == "booked" for r in everything)
                                  and all(status(client, r) in ("booked", "rejected") for r in clash), timeout=20)
        assert sorted(status(tc, r) or "" for r in clash) == ["booked", "rejected"]
        assert [status(tb, r) for r in clash] == [status(tc, r) for r in clash] == [status(ta, r) for r in clash]


@pytest.mark.slow
@pytest.mark.node
async def test_a_stock_yjs_client_on_one_process_sees_and_edits_a_terminals_write_on_another(
        cluster: list[RelayProcess], node_env: NodeEnv) -> None:
    a, _b, c = cluster
    async with WireClient(a.url, actor="desk-a") as desk:
        calendar = (await desk.open(CAL)).calendar
        booked = calendar.book(resource="room-1", start="2026-12-01T09:00Z", end="2026-12-01T09:30Z",
                               patient="P-0042", note="first visit", now=NOW)
        await desk.push(CAL)
        await desk.wait_acked(CAL)
        run = await run_yclient(node_env, "edit", "--url", c.url, "--calendar", CAL, "--reservation", booked.id,
                                "--note", "edited in a stock Yjs client")
        assert run.code == 0, f"yclient.mjs failed: {run.events} {run.stderr[-2000:]}"
        seen = run.first("seen")["fields"]
        assert (seen["patient"], seen["note"]) == ("P-0042", "first visit")
        await desk.wait_for(lambda: calendar.get(booked.id).note == "edited in a stock Yjs client")


@pytest.mark.slow
async def test_a_sigkilled_process_loses_nothing_it_acknowledged(cluster: list[RelayProcess]) -> None:
    _a, b, c = cluster
    async with WireClient(c.url, actor="reader") as reader:
        await reader.open(CAL)
        await reader.wait_synced(CAL)
        async with WireClient(b.url, actor="desk-b") as writer:
            await writer.open(CAL)
            acked = []
            for i in range(20):
                acked.append(await writer.book(CAL, resource=f"room-{i}"))
                await writer.wait_acked(CAL)
            for i in range(20):  # in flight when it dies
                await writer.book(CAL, resource=f"late-{i}")
            await b.kill(signal.SIGKILL)
        await reader.wait_for(lambda: all(status(reader, r) is not None for r in acked), timeout=20)
    async with WireClient(c.url, actor="late-reader") as late:  # and from the store, not only from memory
        await late.open(CAL)
        await late.wait_synced(CAL)
        assert set(acked) <= set(late.replica(CAL).calendar.reservations)


async def test_a_lost_listen_connection_catches_up_from_the_last_applied_seq(tmp_path: Path, postgres_url: str) -> None:
    store_a, store_b = await open_storage(postgres_url), await open_storage(postgres_url)
    async with Relay(relay_config(tmp_path, "r-a"), storage=store_a) as ra, \
            Relay(relay_config(tmp_path, "r-b"), storage=store_b) as rb, \
            WireClient(ra.url, actor="desk-a") as ta, WireClient(rb.url, actor="desk-b") as tb:
        cluster_b = rb.cluster
        assert cluster_b is not None
        cluster_b.reconnect = Backoff(initial_s=0.5, factor=1.0, max_s=0.5, jitter=0.0)
        for client in (ta, tb):
            await client.open(CAL)
            await client.wait_synced(CAL)
        first = await ta.book(CAL, hour=9)
        await tb.wait_for(lambda: status(tb, first) is not None)
        second = await ta.book(CAL, hour=17)  # b is caught up: it takes the rows from the notice, no query
        await tb.wait_for(lambda: status(tb, second) is not None)
        assert cluster_b.stats.carried >= 1
        admin = await asyncpg.connect(postgres_url)
        assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", cluster_b.listen_pid)
        await admin.close()
        await rb.wait_for(lambda: not cluster_b.stats.listening)
        missed = [await ta.book(CAL, hour=10 + i) for i in range(3)]  # committed while b does not listen
        await ta.wait_acked(CAL)
        await rb.wait_for(lambda: cluster_b.stats.listening)
        await tb.wait_for(lambda: all(status(tb, r) is not None for r in missed))
        assert cluster_b.stats.catch_ups["reconnect"] >= 1
        assert "accord_cluster_listen_reconnects_total 1" in rb.render_metrics()




async def test_the_process_that_writes_a_calendar_compacts_it_not_every_process_holding_it(
        tmp_path: Path, postgres_url: str) -> None:
    """Each compaction encodes and stores the whole document: rows another process wrote (and
    compacts) must not make this one compact too."""
    store_a, store_b = await open_storage(postgres_url), await open_storage(postgres_url)
    async with Relay(relay_config(tmp_path, "r-a", compact_rows=5), storage=store_a) as ra, \
            Relay(relay_config(tmp_path, "r-b", compact_rows=5), storage=store_b) as rb, \
            WireClient(ra.url, actor="desk-a") as ta, WireClient(rb.url, actor="desk-b") as tb:
        for client in (ta, tb):
            await client.open(CAL)
            await client.wait_synced(CAL)
        booked = [await ta.book(CAL, resource=f"room-{i}") for i in range(30)]
        await ta.wait_acked(CAL)
        await tb.wait_for(lambda: all(status(tb, r) is not None for r in booked))
        await ra.pipeline.drain()
        await rb.pipeline.drain()
        assert (await store_a.log_length(CalendarId(CAL)))[0] < 30  # a compacted what it wrote
        assert rb.calendars.loaded[CAL].rows_in_log == 0  # b wrote nothing, so it never compacted
        reader = await open_storage(postgres_url)
        try:
            replica = Replica(CAL, actor="reader")
            replica.load(await reader.load(CalendarId(CAL)))
            assert set(booked) <= set(replica.calendar.reservations)
        finally:
            await reader.close()


@pytest.mark.slow
async def test_the_home_process_restarted_after_the_cluster_started_together_still_decides(
        cluster: list[RelayProcess]) -> None:
    a, b, _c = cluster  # started at once: each process keeps its own signing key, none overwrites another's
    async with WireClient(a.url, actor="desk-a") as ta:
        await ta.open(CAL)
        first = await ta.book(CAL, resource="room-a")
        await ta.wait_for(lambda: status(ta, first) == "booked")
    await a.kill(signal.SIGTERM)
    await a.start()
    async with WireClient(b.url, actor="desk-b") as tb:
        await tb.open(CAL)
        later = await tb.book(CAL, resource="room-b")
        await tb.wait_for(lambda: tb.replica(CAL).calendar.home == "pg-a" and status(tb, later) == "booked", timeout=20)
