"""Relays on PostgreSQL: one relay with ``--db postgresql://...``, then a cluster of relay
processes sharing one database (cross-process fan-out, catch-up, SIGKILL)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from relays import RelayProcess
from wire import WireClient

CAL = "clinic-1"


@pytest.mark.slow
async def test_a_relay_process_on_a_postgresql_url_keeps_what_it_acknowledged_across_sigkill(
        tmp_path: Path, postgres_url: str) -> None:
    relay = await RelayProcess(tmp_path, "pg-a", "--home", "clinic-*", db=postgres_url).start()
    try:
        async with WireClient(relay.url) as client:
            await client.open(CAL)
            ids = [await client.book(CAL, resource=f"room-{i}") for i in range(30)]
            await client.wait_acked(CAL)
            await relay.kill(signal.SIGKILL)
        await relay.start()
        async with WireClient(relay.url) as reader:
            await reader.open(CAL)
            await reader.wait_synced(CAL)
            assert set(ids) <= set(reader.replica(CAL).calendar.reservations.keys())
    finally:
        relay.cleanup()
