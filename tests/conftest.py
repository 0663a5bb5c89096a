"""Fixtures shared by the test suite. Keep this small and generic; put feature helpers next to their tests."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from postgres import PostgresMissing, PostgresServer, required, running_server

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


@pytest.fixture
def postgres_url(postgres_server: PostgresServer) -> str:
    """The URL of a fresh, empty database on the session's PostgreSQL server."""
    return postgres_server.database()
