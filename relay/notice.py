"""A change notice: wait, under a deadline, until a condition on the relay's state holds.

Parts that change observable state (a batch committed, a connection opened or closed, a
calendar loaded) call :meth:`Notice.notify`; waiters re-check their condition on each notice.
Tests and operators' tools wait on conditions this way instead of polling with sleeps.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class Notice:
    """Wake everyone waiting in :meth:`wait_for` so they re-check their condition."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def notify(self) -> None:
        """Something observable changed."""
        event, self._event = self._event, asyncio.Event()
        event.set()

    async def wait_for(self, condition: Callable[[], T], timeout_s: float) -> T:
        """Return ``condition()``'s first truthy value, checked now and after every notice.

        Raises:
            TimeoutError: it did not hold within ``timeout_s``.
        """
        async with asyncio.timeout(timeout_s):
            while not (value := condition()):
                await self._event.wait()
            return value
