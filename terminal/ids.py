"""Reservation ids as people read and type them. Ids are UUIDv7 strings, too long to read out at
a desk, so the terminal shows the *last* :data:`SHORT_ID` characters (the random tail: the
leading ones are a timestamp, shared by everything booked around the same time) and accepts
exactly what it shows: the short id, or at least :data:`MIN_ID_FRAGMENT` of its first characters,
or the full id (or at least :data:`MIN_ID_PREFIX` of its first characters, as pasted from JSON). A
fragment that several ids match raises :class:`~accord.terminal.errors.AmbiguousId`, listing the
candidates; one that none matches :class:`~accord.engine.errors.ReservationNotFound`.
"""

from __future__ import annotations

from collections.abc import Iterable

from accord.engine.errors import ReservationNotFound
from accord.engine.model import CalendarId, ReservationId

from .errors import AmbiguousId

SHORT_ID = 8
MIN_ID_FRAGMENT = 4
MIN_ID_PREFIX = 13  # a full id's first 13 characters reach past its timestamp (8 + dash + 4)
SHOWN_MATCHES = 5


def short_id(reservation_id: str) -> str:
    """The last 8 characters (unique enough to type; ``accord terminal show`` accepts them)."""
    return reservation_id[-SHORT_ID:]


def resolve_id(calendar: CalendarId, ids: Iterable[str], fragment: str) -> ReservationId:
    """The one id among ``ids`` (of ``calendar``) that ``fragment`` names (see the module docstring).

    Raises:
        ReservationNotFound: no id matches (the message says how to find the right one).
        AmbiguousId: several match; the caller asks for more characters.
    """
    keys = [str(k) for k in ids]
    text = fragment.strip().lower()
    if text in keys:
        return ReservationId(text)
    matches: list[str] = []
    if len(text) >= MIN_ID_FRAGMENT:
        matches = sorted(k for k in keys if k[-SHORT_ID:].startswith(text) or k.endswith(text)
                         or (len(text) >= MIN_ID_PREFIX and k.startswith(text)))
    if len(matches) == 1:
        return ReservationId(matches[0])
    if matches:
        shown = ", ".join(short_id(k) for k in matches[:SHOWN_MATCHES])
        more = f" and {len(matches) - SHOWN_MATCHES} more" if len(matches) > SHOWN_MATCHES else ""
        raise AmbiguousId(f"id {fragment!r} matches {len(matches)} reservations: {shown}{more}; "
                          "give more characters (the ids `accord terminal list` shows)")
    raise ReservationNotFound(
        f"no reservation {fragment!r} in calendar {calendar!r} on this terminal; "
        "check the id (see `accord terminal list`), or sync and try again"
    )
