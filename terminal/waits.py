"""Waiting for the terminal's state to reach a condition, under a deadline. Nothing here polls: a
:class:`Wakeup` is set by the terminal whenever anything observable changes (a write, an update
or ACK from the relay, the link's state), and each waiter re-checks its condition then. The
functions below are the conditions the terminal offers, each with what it means when the
deadline passes first: the link concluded its first attempt (:func:`link_concluded`) or left a
state (:func:`link_changed`), the relay acknowledged and pulled everything (:func:`all_synced`,
which raises RelayUnreachable, RelayRefused or SyncTimeout), and the home relay decided a
reservation (:func:`decided`, DecisionTimeout).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import TypeVar

from accord.engine.errors import CloseCode
from accord.engine.model import CalendarId, Reservation

from .errors import DecisionTimeout, RelayRefused, RelayUnreachable, SyncTimeout, TerminalError
from .link import Link, LinkState
from .status import is_decided
from .store import TerminalStore

T = TypeVar("T")


class Wakeup:
    """Wakes every waiter at once; a waiter that checks between two wake-ups misses none."""

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self.closed = False

    def wake(self) -> None:
        """Something observable changed: every waiter re-checks its condition."""
        self._event.set()
        self._event = asyncio.Event()

    def close(self) -> None:
        """The terminal closed: every waiter raises TerminalError."""
        self.closed = True
        self.wake()

    async def until(self, check: Callable[[], T | None], timeout_s: float) -> T:
        """Re-run ``check`` on every wake-up until it returns a value; return that value.

        Raises:
            TimeoutError: ``check`` returned None until the deadline.
            TerminalError: the terminal closed meanwhile.
        """
        async with asyncio.timeout(timeout_s):
            while True:
                event = self._event  # taken before checking, so no wake-up is missed
                if self.closed:
                    raise TerminalError("the terminal is closed")
                result = check()
                if result is not None:
                    return result
                await event.wait()


async def link_concluded(wakeup: Wakeup, link: Link | None, timeout_s: float) -> LinkState:
    """Wait until ``link`` is online, refused, or offline after an attempt; the state then (or at
    the deadline). Without a link (no relay configured): ``offline`` at once."""
    if link is None:
        return LinkState.OFFLINE

    def concluded() -> LinkState | None:
        if link.state in (LinkState.ONLINE, LinkState.REFUSED):
            return link.state
        return link.state if link.attempts > 0 and link.state is LinkState.OFFLINE else None

    try:
        return await wakeup.until(concluded, timeout_s)
    except TimeoutError:
        return link.state


async def link_changed(wakeup: Wakeup, link: Link | None, state: LinkState, timeout_s: float) -> LinkState:
    """Wait until ``link`` is in another state than ``state``; the state then (or at the deadline).
    Without a link (no relay configured): ``offline`` at once."""
    if link is None:
        return LinkState.OFFLINE
    try:
        return await wakeup.until(lambda: link.state if link.state is not state else None, timeout_s)
    except TimeoutError:
        return link.state


async def all_synced(
    wakeup: Wakeup, relay: str | None, link: Link, store: TerminalStore, names: Sequence[CalendarId] | None, timeout_s: float
) -> None:
    """Wait until the relay acknowledged every local change of ``names`` (default: every open
    calendar) and their first pull on this connection is done.

    Raises:
        RelayRefused: the relay refused this terminal or one of the calendars.
        RelayUnreachable: not connected when the deadline passed.
        SyncTimeout: connected, but the relay did not catch up in time.
    """

    def done() -> bool | None:
        if link.state is LinkState.REFUSED:
            kept = sum(store.pending(name) for name in store.calendars)
            tail = ""
            if link.refused_code == CloseCode.FORBIDDEN and kept:
                tail = (f"; {kept} local change(s) stay on this terminal only and are not sent again unasked "
                        "(`accord terminal retry` sends them with the current token, `accord terminal discard` "
                        "drops them)")
            raise RelayRefused(
                f"relay {relay} refused this terminal: {link.last_error}; "
                f"check the token (CLI: --token or ACCORD_TOKEN){tail}",
                link.refused_code or CloseCode.UNAUTHORIZED,
            )
        wanted = names if names is not None else list(store.calendars)
        for name in wanted:
            if store.held(name):
                raise RelayRefused(
                    f"{store.pending(name)} local change(s) to calendar {name!r} were refused by relay {relay} "
                    f"({store.held(name)}); they stay on this terminal only and are not sent again: "
                    "`accord terminal retry` sends them with the current token, `accord terminal discard` drops them",
                    CloseCode.FORBIDDEN,
                )
            if name in link.refused_calendars:
                raise RelayRefused(
                    f"relay {relay} refused calendar {name!r}: {link.refused_calendars[name]}; "
                    "check the calendar name, or ask for a token that covers it",
                    CloseCode.FORBIDDEN,
                )
        if link.state is not LinkState.ONLINE:
            return None
        for name in wanted:
            if name not in store.calendars or name not in link.pulled or not store.is_acknowledged(name):
                return None
        return True

    try:
        await wakeup.until(done, timeout_s)
    except TimeoutError:
        pending = sum(store.pending(name) for name in store.calendars)
        if link.state is not LinkState.ONLINE:
            raise RelayUnreachable(
                f"relay {relay} is unreachable ({link.last_error or 'no connection yet'}); "
                f"{pending} local change(s) are saved here and will sync when it is back"
            ) from None
        raise SyncTimeout(
            f"relay {relay} did not acknowledge {pending} local change(s) within {timeout_s:g} s; "
            "they are saved here; try again or raise --timeout"
        ) from None


async def decided(
    wakeup: Wakeup, link: Link | None, store: TerminalStore, name: CalendarId, reservation_id: str, timeout_s: float
) -> Reservation:
    """Wait until the home relay decided the reservation's current request (or, without a home,
    until the relay's state was pulled); return the reservation then.

    Raises:
        ReservationNotFound: no such reservation (at once: the first check reads it).
        DecisionTimeout: no decision before the deadline.
        TerminalError: the terminal closed meanwhile.
    """

    def check() -> Reservation | None:
        opened = store.calendars.get(name)
        if opened is None:
            raise TerminalError("the terminal was closed while waiting for a decision")
        reservation = opened.replica.calendar.get(reservation_id)
        if opened.replica.calendar.home is None:
            # Without a known home the status is final only once we know the relay's state.
            pulled = link is None or name in link.pulled
            return reservation if pulled else None
        return reservation if is_decided(reservation) else None

    try:
        return await wakeup.until(check, timeout_s)
    except TimeoutError:
        raise DecisionTimeout(
            f"reservation {reservation_id} was not decided within {timeout_s:g} s; it stays requested: "
            "check later with `accord terminal show`"
        ) from None
