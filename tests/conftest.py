"""Fixtures shared by the test suite. Keep this small and generic; put feature helpers next to their tests."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from postgres import PostgresMissing, PostgresServer, required, running_server

from accord.engine.storage import MemoryStorage, SqliteStorage, open_storage

# The engine never reads a clock: tests pass this instant (or one derived from it) as ``now=``.
FIXED_NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    """A fixed, timezone-aware "current time" for engine writes."""
    return FIXED_NOW


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """A throwaway PostgreSQL server for the whole session (see tests/postgres.py); skips
    without binaries, fails instead under ACCORD_REQUIRE_POSTGRES=1."""
    try:
        with running_server() as server:
            yield server
    except PostgresMissing as exc:
        if required():
            pytest.fail(f"{exc} (ACCORD_REQUIRE_POSTGRES is set)")
        pytest.skip(str(exc))


@pytest.fixture(params=["memory", "sqlite", "postgres"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Any]:
    """Each store adapter in turn, empty (PostgreSQL: a fresh database on the session's server);
    the storage conformance cases take it."""
    opened: Any
    if request.param == "memory":
        opened = MemoryStorage()
    elif request.param == "sqlite":
        opened = await SqliteStorage.open(tmp_path / "store.sqlite")
    else:
        opened = await open_storage(request.getfixturevalue("postgres_url"))
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.database()
