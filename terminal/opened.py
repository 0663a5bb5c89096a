"""An open calendar on a terminal: its replica and the ids its transactions touched."""

from __future__ import annotations

import contextlib
from typing import Any

from pycrdt import Subscription

from accord.engine.model import ReservationId
from accord.engine.replica import Replica


class OpenCalendar:
    """A loaded replica plus the ids its transactions touched (collected by a deep observer)."""

    def __init__(self, replica: Replica) -> None:
        self.replica = replica
        self.touched: set[str] = set()
        self.everything = False
        self._subs: list[tuple[Any, Subscription]] = [
            (replica.calendar.reservations, replica.calendar.reservations.observe_deep(self._on_reservations)),
            (replica.calendar.meta, replica.calendar.meta.observe(self._on_meta)),
        ]

    def _on_reservations(self, events: list[Any]) -> None:
        for event in events:
            path = list(event.path)
            if path:
                self.touched.add(str(path[0]))
            else:
                self.touched.update(str(key) for key in event.keys)

    def _on_meta(self, _event: Any) -> None:
        self.everything = True  # e.g. the home changed: every status may have changed

    def take_touched(self) -> tuple[ReservationId, ...]:
        if self.everything:
            self.touched.update(self.replica.calendar.reservations.keys())
        ids = tuple(sorted(ReservationId(i) for i in self.touched))
        self.touched.clear()
        self.everything = False
        return ids

    def close(self) -> None:
        for shared, sub in self._subs:
            with contextlib.suppress(Exception):
                shared.unobserve(sub)
        self.replica.close()
