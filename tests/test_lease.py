"""The lease in a shared PostgreSQL store (relay/lease.py): one holder at a time, the epoch
bumped on every take, the next candidate takes over when the holder's session ends, and a
holder whose last heartbeat is too old stops counting itself as the holder."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import asyncpg
import pytest
from relays import Relay, relay_config

from accord.engine.storage import open_storage
from accord.engine.storage.postgres import PostgresStorage
from accord.relay.lease import Lease


class Watched:
    """A lease with its acquisitions and losses recorded as events."""

    def __init__(self, url: str, holder: str, **kw: object) -> None:
        self.lease = Lease(url, "test", holder, **kw)  # type: ignore[arg-type]
        self.taken = asyncio.Event()
        self.lost = asyncio.Event()
        self.epochs: list[int] = []
        self.lease.on_acquired = self._acquired
        self.lease.on_lost = self.lost.set

    def _acquired(self, epoch: int) -> None:
        self.epochs.append(epoch)
        self.taken.set()


@pytest.fixture
async def url(postgres_url: str) -> AsyncIterator[str]:
    await (await PostgresStorage.open(postgres_url)).close()  # the schema, with accord.leases
    yield postgres_url


async def first_taken(*candidates: Watched) -> Watched:
    waits = {asyncio.ensure_future(c.taken.wait()): c for c in candidates}
    done, pending = await asyncio.wait(waits, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for task in pending:
        task.cancel()
    assert done, "nobody took the lease"
    return waits[next(iter(done))]


async def test_one_holder_at_a_time_and_the_next_takes_over_when_its_session_ends(url: str) -> None:
    a, b = Watched(url, "a"), Watched(url, "b")
    a.lease.start()
    b.lease.start()
    try:
        holder = await first_taken(a, b)
        other = b if holder is a else a
        assert holder.lease.valid() and not other.lease.valid()
        assert holder.epochs == [1] and holder.lease.fence is not None and holder.lease.fence.epoch == 1
        admin = await asyncpg.connect(url)
        try:
            assert await admin.fetchval("SELECT holder FROM accord.leases WHERE name = 'test'") == holder.lease.holder
            assert await admin.fetchval("SELECT pg_terminate_backend($1, 10000)", holder.lease.session_pid)
        finally:
            await admin.close()
        async with asyncio.timeout(10):
            await holder.lost.wait()
            await other.taken.wait()
        assert other.epochs == [2] and not holder.lease.valid() and holder.lease.fence is None
    finally:
        await asyncio.gather(a.lease.close(), b.lease.close())


async def test_a_holder_whose_last_heartbeat_is_too_old_steps_down_before_the_server_lets_go(url: str) -> None:
    now = [0.0]
    a = Watched(url, "a", clock=lambda: now[0])
    a.lease.start()
    try:
        async with asyncio.timeout(10):
            await a.taken.wait()
        assert a.lease.valid()
        now[0] += a.lease.lease_s - a.lease.margin_s  # as if the process had been stopped that long
        assert not a.lease.valid() and a.lease.fence is None  # at once: no heartbeat has to run first
        async with asyncio.timeout(10):
            await a.lost.wait()
        assert a.lease.stats.lost == 1
    finally:
        await a.lease.close()


def test_a_lease_must_outlast_its_heartbeat() -> None:
    with pytest.raises(ValueError, match="outlast"):
        Lease("postgresql://unused", "test", "a", lease_s=1.0, heartbeat_s=0.5, heartbeat_timeout_s=0.5)


def test_a_lease_shorter_than_a_second_is_refused_on_the_command_line(capsys: pytest.CaptureFixture[str]) -> None:
    from accord.relay.cli import main

    with pytest.raises(SystemExit) as stopped:
        main(["--id", "r-a", "--lease", "0.5"])
    assert stopped.value.code == 2
    assert "shorter than 1 s" in capsys.readouterr().err


async def test_a_cluster_member_holds_its_leases_for_the_time_it_is_given(tmp_path: Path, url: str) -> None:
    config = relay_config(tmp_path, "r-a", home_globs=["clinic-*"], lease_s=1.5)
    async with Relay(config, storage=await open_storage(url)) as relay:
        failover = relay.failover
        assert failover is not None
        lease = failover.lease
        assert (lease.lease_s, lease.heartbeat_s, lease.heartbeat_timeout_s, lease.margin_s) == (1.5, 0.25, 0.5, 0.5)
        await relay.wait_for(lambda: lease.valid())
