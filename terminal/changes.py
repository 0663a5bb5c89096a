"""Change notices: which reservations changed, and streams of them for consumers.

A terminal publishes one :class:`ChangeNotice` per local write, per update from the relay and
per acknowledgement that covers local changes. Consumers use a callback
(:meth:`Terminal.on_change`) or a :class:`ChangeStream` (:meth:`Terminal.changes`).
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import Any

from accord.engine.model import CalendarId, ReservationId


class ChangeKind(enum.StrEnum):
    """Why observers are told about reservations."""

    LOCAL = "local"  # a write on this terminal
    REMOTE = "remote"  # an update arrived from the relay
    STORED = "stored"  # the relay acknowledged local changes to these reservations
    OVERFLOW = "overflow"  # a slow change stream dropped notices: re-read what you show


@dataclass(frozen=True, slots=True)
class ChangeNotice:
    """Reservations of one calendar that changed (ids only; read them with :meth:`Terminal.get`)."""

    calendar: CalendarId
    reservation_ids: tuple[ReservationId, ...]
    kind: ChangeKind

    def to_json(self) -> dict[str, Any]:
        return {"calendar": self.calendar, "ids": list(self.reservation_ids), "kind": str(self.kind)}


class ChangeStream:
    """Change notices for one consumer, in order, from its creation on (see :meth:`Terminal.changes`)."""

    def __init__(self, streams: set[ChangeStream], max_queued: int, *, closed: bool = False) -> None:
        self._streams = streams
        self._max = max(1, max_queued)
        self._queue = asyncio.Queue[ChangeNotice | None](maxsize=self._max + 1)  # +1: room for the end marker
        self._ended = False
        if closed:
            self.end()
        else:
            streams.add(self)

    def put(self, notice: ChangeNotice) -> None:
        """Queue ``notice``; when the backlog is full, replace it by one ``overflow`` notice."""
        if self._ended:
            return
        if self._queue.qsize() >= self._max:
            while not self._queue.empty():
                self._queue.get_nowait()
            notice = ChangeNotice(notice.calendar, (), ChangeKind.OVERFLOW)
        self._queue.put_nowait(notice)

    def end(self) -> None:
        """No more notices will come: iteration stops once the backlog is consumed."""
        if not self._ended:
            self._ended = True
            self._streams.discard(self)
            self._queue.put_nowait(None)

    close = end

    def __aiter__(self) -> ChangeStream:
        return self

    async def __anext__(self) -> ChangeNotice:
        notice = await self._queue.get()
        if notice is None:
            self._queue.put_nowait(None)  # stay ended for later calls
            raise StopAsyncIteration
        return notice

    async def __aenter__(self) -> ChangeStream:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        self.end()
