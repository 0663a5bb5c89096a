"""accord's core: the reservation model on pycrdt, the sync protocol as a sans-I/O state
machine, and storage. Imports nothing from ``relay`` or ``terminal``."""

from .calendar import Calendar
from .errors import AccordError, CloseCode
from .model import CalendarId, Reservation, ReservationId, Resource, Slot, Status
from .replica import Change, Replica
from .sync import PeerSync

__all__ = [
    "AccordError",
    "Calendar",
    "CalendarId",
    "Change",
    "CloseCode",
    "PeerSync",
    "Replica",
    "Reservation",
    "ReservationId",
    "Resource",
    "Slot",
    "Status",
]
