"""Receipts: this relay's clock stamps the booking requests its clients make (see
:mod:`accord.engine.receipts`), for calendars with a hold TTL.

The hub applies a client's update tagged :data:`~accord.engine.receipts.CLIENT_ORIGIN` when
:meth:`Receipts.wanted` says so, then calls :meth:`Receipts.stamp`, which writes the receipts and
returns one change holding the client's update and the receipts together: stored in one row
and forwarded as one message, so no replica (the home least of all) ever has the request
without its receipt. The sender gets that change too (it lacks the receipts).

A calendar wants receipts when it has a hold TTL setting (``meta.hold_ttl``) or this relay was
started with ``--hold-ttl``; otherwise nothing here runs (no tagging, no observer).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import pycrdt

from accord.engine.model import CalendarId
from accord.engine.receipts import Stamper
from accord.engine.replica import Change

from .calendars import CalendarHandle
from .config import utc_now


class Receipts:
    """The receipt stampers of the loaded calendars that want receipts.

    Plug :meth:`calendar_unloading` into the calendar set's unloading hooks.
    """

    def __init__(self, relay_id: str, *, hold_ttl_s: float | None = None,
                 clock: Callable[[], datetime] = utc_now) -> None:
        self.relay_id = relay_id
        self.always = bool(hold_ttl_s)
        self.clock = clock
        self._stampers: dict[CalendarId, Stamper] = {}
        self.written = 0

    def wanted(self, handle: CalendarHandle) -> bool:
        """True if client updates to this calendar get receipts (it has a hold TTL)."""
        if handle.name in self._stampers:
            return True
        calendar = handle.replica.calendar
        if not self.always and calendar.hold_ttl is None:
            return False
        self._stampers[handle.name] = Stamper(calendar.reservations, calendar.receipts, self.relay_id,
                                              lambda: self.always or calendar.hold_ttl is not None)
        return True

    def stamp(self, handle: CalendarHandle, change: Change) -> tuple[Change, bool]:
        """``change`` (a client's update, applied tagged) with this relay's receipts for the
        requests it makes merged in; the flag is True if any were (then echo it to the sender)."""
        stamper = self._stampers.get(handle.name)
        if stamper is None or stamper.stamp(self.clock()) == 0:
            return change, False
        written = handle.replica.take_changes()
        self.written += len(written)
        merged = pycrdt.merge_updates(change.update, *(c.update for c in written))
        return Change(merged, written[-1].state_vector), True

    def calendar_unloading(self, handle: CalendarHandle) -> None:
        stamper = self._stampers.pop(handle.name, None)
        if stamper is not None:
            stamper.close()
