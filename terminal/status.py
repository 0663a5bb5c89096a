"""What a terminal reports about its sync: per reservation (:class:`SyncState`) and overall
(:class:`TerminalStatus`, from :meth:`Terminal.status`)."""

from __future__ import annotations

import enum
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from accord.engine.model import CalendarId, Reservation, Status, format_time

from .link import LinkState


class SyncState(enum.StrEnum):
    """How far a reservation's latest local change got."""

    LOCAL = "local"  # saved in this terminal's store; the relay has not acknowledged it yet
    STORED = "stored"  # the relay durably stored it (or it came from the relay)
    DECIDED = "decided"  # the calendar's home relay booked or rejected the current request


@dataclass(frozen=True, slots=True)
class CalendarStatus:
    """Sync status of one open calendar."""

    name: CalendarId
    pending: int
    pulled: bool  # the relay's state arrived during the current connection
    refused: str  # the relay's reason if it refused this calendar, else ""


@dataclass(frozen=True, slots=True)
class TerminalStatus:
    """What :meth:`Terminal.status` reports."""

    name: str
    relay: str | None
    link: LinkState
    pending: int  # local changes not yet acknowledged by the relay, all calendars
    last_ack_at: datetime | None
    last_error: str
    calendars: tuple[CalendarStatus, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "relay": self.relay,
            "link": str(self.link),
            "pending": self.pending,
            "last_ack_at": format_time(self.last_ack_at) if self.last_ack_at else None,
            "last_error": self.last_error,
            "calendars": [
                {"name": c.name, "pending": c.pending, "pulled": c.pulled, "refused": c.refused} for c in self.calendars
            ],
        }


def is_decided(reservation: Reservation) -> bool:
    """True if the home relay decided the reservation's current request (booked, rejected, or a closed state)."""
    return reservation.status is not Status.PENDING and reservation.proposal != "pending"
