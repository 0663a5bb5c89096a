"""Awareness (presence) among a calendar's stock Yjs clients, as y-websocket's server relays it.

Presence is not stored and not forwarded to peers or terminals: it is who looks at the board
right now. Each session remembers which presence client ids its connection announced, so that
when the connection goes away the others are told at once instead of keeping a ghost until
their awareness timeout.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from accord.engine.model import CalendarId

from .calendars import CalendarHandle

if TYPE_CHECKING:
    from .connection import Connection


def broadcast(handle: CalendarHandle, payload: bytes, *, sender: Connection | None) -> None:
    """Send presence ``payload`` to the calendar's stock Yjs clients other than ``sender``."""
    for other in handle.subscribers:
        if other is not sender and other.is_stock_yjs:
            other.send(other.session.awareness(handle.name, payload))


def clear(connection: Connection, loaded: Mapping[CalendarId, CalendarHandle]) -> None:
    """Tell the others that every presence entry ``connection`` announced is gone."""
    for calendar, payload in connection.session.awareness_gone():
        handle = loaded.get(calendar)
        if handle is not None:
            broadcast(handle, payload, sender=connection)
