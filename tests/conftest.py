"""Fixtures shared by the test suite. Keep this small and generic; put feature helpers next to their tests."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

# The engine never reads a clock: tests pass this instant (or one derived from it) as ``now=``.
FIXED_NOW = datetime(2026, 11, 30, 8, 0, 0, tzinfo=UTC)


@pytest.fixture
def now() -> datetime:
    """A fixed, timezone-aware "current time" for engine writes."""
    return FIXED_NOW
