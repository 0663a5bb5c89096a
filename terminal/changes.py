"""Change notices: which reservations changed, and streams of them for consumers.

A terminal publishes one :class:`ChangeNotice` per local write, per update from the relay and
per acknowledgement that covers local changes, through its :class:`ChangeFeed`. Consumers use a
callback (:meth:`Terminal.on_change`) or a :class:`ChangeStream` (:meth:`Terminal.changes`).
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from accord.engine.model import CalendarId, ReservationId

log = logging.getLogger(__name__)


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


class ChangeFeed:
    """Hands every notice to the subscribed callbacks and open streams, in that order."""

    def __init__(self) -> None:
        self._callbacks: list[Callable[[ChangeNotice], None]] = []
        self._streams: set[ChangeStream] = set()

    def subscribe(self, callback: Callable[[ChangeNotice], None]) -> Callable[[], None]:
        """Call ``callback`` for every notice from now on; returns an unsubscribe function."""
        self._callbacks.append(callback)

        def unsubscribe() -> None:
            with contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    def stream(self, max_queued: int, *, closed: bool = False) -> ChangeStream:
        """A new stream of the notices from now on (already ended if ``closed``)."""
        return ChangeStream(self._streams, max_queued, closed=closed)

    def publish(self, notice: ChangeNotice) -> None:
        """Hand ``notice`` out; one naming no reservation (and not an overflow) is dropped."""
        if not notice.reservation_ids and notice.kind is not ChangeKind.OVERFLOW:
            return
        for callback in list(self._callbacks):
            try:
                callback(notice)
            except Exception:  # an observer's bug must not break sync
                log.exception("change observer failed")
        for stream in list(self._streams):
            stream.put(notice)

    def end(self) -> None:
        """End every open stream (the terminal closed)."""
        for stream in list(self._streams):
            stream.end()
